"""Regenerate fixtures/docstring_sentences.txt: real English sentences from stdlib docstrings.

Deterministic (sorted modules and names); used as held-out calibration/evaluation text.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

MODULES = [
    "argparse",
    "asyncio",
    "collections",
    "csv",
    "datetime",
    "decimal",
    "email",
    "fractions",
    "functools",
    "gzip",
    "http.client",
    "inspect",
    "json",
    "logging",
    "pathlib",
    "pickle",
    "random",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "unittest",
    "urllib.parse",
    "uuid",
    "zipfile",
]


def sentences() -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for _, obj in sorted(inspect.getmembers(module), key=lambda kv: kv[0]):
            doc = inspect.getdoc(obj) or ""
            for para in doc.split("\n\n")[:2]:
                text = " ".join(para.split())
                for sent in re.split(r"(?<=[.!?])\s+", text):
                    if (
                        40 <= len(sent) <= 200
                        and sent[0].isupper()
                        and sent.endswith(".")
                        and not re.search(r"[>{}\[\]=|`]", sent)
                        and sent not in seen
                    ):
                        seen.add(sent)
                        out.append(sent)
    return out


if __name__ == "__main__":
    lines = sentences()
    target = Path(__file__).resolve().parents[1] / "fixtures" / "docstring_sentences.txt"
    target.write_text("\n".join(lines[: int(sys.argv[1]) if len(sys.argv) > 1 else 400]) + "\n")
    print(f"{min(len(lines), 400)} of {len(lines)} sentences -> {target}")
