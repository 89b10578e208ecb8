"""The output directory: staged, then published file by file, so OUT is never half-written.

Every run writes into a private staging folder beside OUT. Only when every artifact is
complete are the files renamed into OUT (``os.replace`` is atomic per file), manifest.json
last — so a reader that trusts the manifest never sees a mix of runs. A failed or killed run
leaves OUT as it was; its staging folder is removed (after SIGKILL: by the next run).
While files are being renamed into OUT its manifest is absent, so a crash inside that window
leaves an OUT that ``check`` reports as incomplete (exit 2), never a mixed set with a manifest.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from qexport.errors import OutputError

MANIFEST = "manifest.json"


class StagedOutput:
    """Context manager: ``with StagedOutput(out) as stage: write into stage.dir``."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"{self.out}: exists and is not a directory; pass a directory to -o")
        parent = self.out.absolute().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(self.out)
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.staging-{os.getpid()}-", dir=parent))
        except OSError as exc:
            raise OutputError(
                f"{self.out}: cannot write there ({exc.strerror}); choose a writable -o directory"
            ) from None

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def publish(self) -> None:
        """Move the staged files into OUT, the manifest last, holding OUT's lock.

        The lock serializes concurrent runs into the same OUT, so the final set is one run's.
        """
        lock_path = self.out.absolute().parent / f".{self.out.name}.lock"
        try:
            with open(lock_path, "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.out.mkdir(parents=True, exist_ok=True)
                names = sorted(p.name for p in self.dir.iterdir() if p.name != MANIFEST)
                (self.out / MANIFEST).unlink(missing_ok=True)  # no manifest while the set changes
                for name in [*names, MANIFEST]:
                    if (self.dir / name).exists():
                        os.replace(self.dir / name, self.out / name)
                _fsync_dir(self.out)
        except OSError as exc:
            raise OutputError(f"{self.out}: cannot publish the results ({exc.strerror})") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_staging(out: Path) -> None:
    """Staging folders of runs that were killed (their pid is gone) are deleted."""
    for stale in out.absolute().parent.glob(f".{out.name}.staging-*"):
        pid = stale.name.split("-")[1] if stale.name.count("-") >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
