"""Arm Ethos-U through vela (PyPI ``ethos-u-vela``): how much of a .tflite runs on the NPU.

``vela_report`` compiles a file for each accelerator and reads vela's own summary: the NPU and
CPU operator counts, which operators fall back (and their count), and vela's estimated
inference time from its model summary CSV (its default system configuration per accelerator:
an estimate of the NPU's work, not a measurement on silicon).
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ACCELERATORS = ("ethos-u85-256", "ethos-u55-128")


def vela_report(path: Path, work: Path) -> dict[str, Any]:
    return {
        accelerator: _one(path, work / f"vela-{path.stem}-{accelerator}", accelerator)
        for accelerator in ACCELERATORS
    }


def _one(path: Path, out: Path, accelerator: str) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "ethosu.vela",
        "--accelerator-config",
        accelerator,
        "--output-dir",
        str(out),
    ]
    done = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        return {"failed": (done.stdout + done.stderr).strip().splitlines()[-1][:300]}
    counts = {
        kind: (int(m.group(1)), float(m.group(2)))
        for kind in ("NPU", "CPU")
        if (m := re.search(rf"{kind} operators = (\d+) \(([\d.]+)%\)", done.stdout))
    }
    fallbacks = Counter(re.findall(r"operator: (\w+), ofm", done.stdout))
    report: dict[str, Any] = {
        "npu_ops": counts["NPU"][0],
        "cpu_ops": counts["CPU"][0],
        "npu_share": counts["NPU"][1],
        "fallbacks": dict(sorted(fallbacks.items())),
    }
    summaries = sorted(out.glob("*_summary_*.csv"))
    if summaries:
        with summaries[0].open() as fh:
            row = next(csv.DictReader(fh))
        report["estimated_ms"] = round(float(row["inference_time"]) * 1e3, 2)
    return report
