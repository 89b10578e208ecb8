"""Regenerate fixtures/docstring_sentences.txt: real English sentences from stdlib docstrings.

Deterministic (sorted modules and names); used as held-out calibration/evaluation text.
``--task`` writes fixtures/docstring_modules.tsv instead: every sentence with the module it
came from, the labeled task of ``benchmarks/task.py`` (modules with at least 19 sentences).
``--learn`` writes qexport/data/learn_sentences.txt (the default text of ``--learn``): the same rule over every other importable
standard-library module, minus every sentence of the two files above, so text that ``--learn``
calibrates on never overlaps the held-out or task sentences.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
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


# Not imported for --learn: GUIs, modules that act on import, and the test suite.
# distutils: in a virtualenv, setuptools' copy answers for it (the text would follow its version).
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "distutils"}


def labeled(modules: list[str] = MODULES) -> list[tuple[str, str]]:
    """(module, sentence) for every qualifying sentence, each sentence once."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # an optional stdlib module this Python was built without
            continue
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


def _with_submodules(names: list[str]) -> list[str]:
    """``names`` and, for packages, their public submodules (no tests), sorted."""
    out = set(names)
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception:
            continue
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
            parts = info.name.split(".")[1:]
            if not any(p.startswith("_") or p in ("test", "tests") for p in parts):
                out.add(info.name)
    return sorted(out)


def write_learn(target: Path, fixtures: Path) -> int:
    taken = set((fixtures / "docstring_sentences.txt").read_text().splitlines())
    taken |= {
        line.split("\t", 1)[1] for line in (fixtures / "docstring_modules.tsv").read_text().splitlines()
    }
    taken |= set(sentences())
    others = [
        m for m in sorted(sys.stdlib_module_names) if m[0] != "_" and m not in SKIP and m not in MODULES
    ]
    kept = [s for _, s in labeled(_with_submodules(others)) if s not in taken]
    target.write_text("\n".join(kept) + "\n")
    return len(kept)


if __name__ == "__main__":
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    if sys.argv[1:] == ["--learn"]:
        count = write_learn(
            Path(__file__).resolve().parents[1] / "qexport" / "data" / "learn_sentences.txt", fixtures
        )
        print(f"{count} sentences -> qexport/data/learn_sentences.txt")
        sys.exit(0)
    if sys.argv[1:] == ["--task"]:
        count = write_task(fixtures / "docstring_modules.tsv")
        print(f"{count} labeled sentences -> {fixtures / 'docstring_modules.tsv'}")
        sys.exit(0)
    lines = sentences()
    target = Path(__file__).resolve().parents[1] / "fixtures" / "docstring_sentences.txt"
    target.write_text("\n".join(lines[: int(sys.argv[1]) if len(sys.argv) > 1 else 400]) + "\n")
    print(f"{min(len(lines), 400)} of {len(lines)} sentences -> {target}")
