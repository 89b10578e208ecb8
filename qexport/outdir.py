"""The output directory: staged, then published file by file, so OUT is never half-written.

Every run writes into a private staging folder beside OUT. Only when every artifact is
complete are the files renamed into OUT (``os.replace`` is atomic per file), manifest.json
last — so a reader that trusts the manifest never sees a mix of runs. A failed or killed run
leaves OUT as it was; its staging folder is removed (or, after SIGKILL, ignored and reused).
"""

from __future__ import annotations

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
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.staging-", dir=parent))
        except OSError as exc:
            raise OutputError(
                f"{self.out}: cannot write there ({exc.strerror}); choose a writable -o directory"
            ) from None

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def publish(self) -> None:
        """Move the staged files into OUT, the manifest last."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            names = sorted(p.name for p in self.dir.iterdir() if p.name != MANIFEST)
            for name in [*names, MANIFEST]:
                if (self.dir / name).exists():
                    os.replace(self.dir / name, self.out / name)
        except OSError as exc:
            raise OutputError(f"{self.out}: cannot publish the results ({exc.strerror})") from None
