"""Verify an output directory against its manifest (hashes, sizes, loadable IR)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qexport.convert import sha256_file
from qexport.errors import QExportError
from qexport.ir import serde
from qexport.outdir import MANIFEST, ir_entries


def verify_outdir(out: Path) -> dict[str, Any]:
    """Return the manifest, or raise QExportError on any mismatch."""
    out = Path(out)
    path = out / MANIFEST
    if not path.is_file():
        raise QExportError(f"{out}: no {MANIFEST}; pass a directory written by `qexport SRC -o OUT`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        entries = [*ir_entries(manifest), *manifest["artifacts"]]
        files = [(e["file"], e["sha256"], e["bytes"]) for e in entries]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise QExportError(f"{path}: unreadable manifest ({exc}); re-run the conversion") from None
    for file, sha, size in files:
        target = out / Path(str(file)).name
        if not target.is_file():
            raise QExportError(f"{target}: listed in the manifest but missing; re-run the conversion")
        if target.stat().st_size != size or sha256_file(target) != sha:
            raise QExportError(f"{target}: sha256 does not match the manifest (modified or corrupt)")
    for entry in ir_entries(manifest):
        serde.load(out / Path(str(entry["file"])).name)
    return manifest
