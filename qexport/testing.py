"""Helpers for users' own test suites.

from qexport.testing import assert_parity
def test_my_export():
    assert_parity("out/", min_cos=0.998, min_sqnr=22)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qexport.parity.check import Thresholds, check_outdir


def assert_parity(
    out_dir: str | Path,
    *,
    min_cos: float = Thresholds.min_cos,
    min_sqnr: float = Thresholds.min_sqnr,
    min_agreement: float = Thresholds.min_agreement,
    data: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``qexport check`` on ``out_dir``; AssertionError listing every row below a threshold."""
    doc = check_outdir(
        Path(out_dir),
        data=Path(data) if data else None,
        thresholds=Thresholds(min_cos, min_sqnr, min_agreement),
    )
    failing = [r for r in doc["comparisons"] if r.get("pass") is False]
    if failing:
        lines = [
            f"{r['candidate']}.{r['output']}: cos mean {r['cos_mean']:.5f}, SQNR {r['sqnr_db']:.2f} dB"
            for r in failing
        ]
        raise AssertionError("qexport parity below threshold: " + "; ".join(lines))
    return doc
