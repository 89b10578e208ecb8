"""The output directory: staged, then published file by file, so OUT is never half-written.

Every run writes into a private staging folder beside OUT. Only when every artifact is
complete are the files renamed into OUT (``os.replace`` is atomic per file), manifest.json
last — so a reader that trusts the manifest never sees a mix of runs. A failed or killed run
leaves OUT as it was; its staging folder is removed (after SIGKILL: by the next run).
While files are being renamed into OUT its manifest is absent, so a crash inside that window
leaves an OUT that ``check`` reports as incomplete (exit 2), never a mixed set with a manifest.

OUT holds exactly one run: publishing first removes what the previous run wrote there (the
files its manifest lists, and the parity check's products), never other files. Concurrent
runs are serialized by an flock on the OUT directory itself, so no lock file is left behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from qexport.errors import OutputError

MANIFEST = "manifest.json"
CHECK_PRODUCTS = ("parity.json", "junit.xml", "report.md")  # and bisect_*.png


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
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                names = sorted(p.name for p in self.dir.iterdir() if p.name != MANIFEST)
                stale = previous_run_files(self.out)
                (self.out / MANIFEST).unlink(missing_ok=True)  # no manifest while the set changes
                for name in sorted(stale - set(names)):
                    (self.out / name).unlink(missing_ok=True)
                for name in [*names, MANIFEST]:
                    if (self.dir / name).exists():
                        os.replace(self.dir / name, self.out / name)
                _fsync_dir(self.out)
            finally:
                os.close(fd)  # closing releases the flock
        except OSError as exc:
            raise OutputError(f"{self.out}: cannot publish the results ({exc.strerror})") from None


def ir_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every IR a manifest lists: one per recipe used (``irs``), or the single ``ir``."""
    return list(manifest.get("irs") or [manifest["ir"]])


def previous_run_files(out: Path) -> set[str]:
    """Names of the files a previous qexport run left in OUT (its manifest's and check's)."""
    names = {p.name for p in out.glob("bisect_*.png")} | {n for n in CHECK_PRODUCTS if (out / n).exists()}
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        entries = [*ir_entries(manifest), *manifest.get("artifacts", [])]
        names |= {Path(str(e["file"])).name for e in entries if isinstance(e, dict) and "file" in e}
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        pass  # no readable manifest: only the check's products are known to be ours
    return names


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
