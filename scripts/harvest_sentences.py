"""Regenerate fixtures/docstring_sentences.txt: real English sentences from stdlib docstrings.

Deterministic (sorted modules and names); used as held-out calibration/evaluation text.
``--task`` writes fixtures/docstring_modules.tsv instead: every sentence with the module it
came from, the labeled task of ``benchmarks/task.py`` (modules with at least 19 sentences).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections import Counter
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


def labeled() -> list[tuple[str, str]]:
    """(module, sentence) for every qualifying sentence, each sentence once."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
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
                        out.append((module_name, sent))
    return out


def sentences() -> list[str]:
    return [sentence for _, sentence in labeled()]


TASK_MIN = 19  # sentences a module needs to be a class of the task


def write_task(target: Path) -> int:
    rows = labeled()
    counts = Counter(module for module, _ in rows)
    kept = [(m, s) for m, s in rows if counts[m] >= TASK_MIN]
    target.write_text("".join(f"{m}\t{s}\n" for m, s in kept))
    return len(kept)


if __name__ == "__main__":
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    if sys.argv[1:] == ["--task"]:
        count = write_task(fixtures / "docstring_modules.tsv")
        print(f"{count} labeled sentences -> {fixtures / 'docstring_modules.tsv'}")
        sys.exit(0)
    lines = sentences()
    target = Path(__file__).resolve().parents[1] / "fixtures" / "docstring_sentences.txt"
    target.write_text("\n".join(lines[: int(sys.argv[1]) if len(sys.argv) > 1 else 400]) + "\n")
    print(f"{min(len(lines), 400)} of {len(lines)} sentences -> {target}")
