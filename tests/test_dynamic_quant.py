"""The asymmetric dynamic rule is XNNPACK's, and every consumer agrees on it."""

from __future__ import annotations

import numpy as np
import pytest

from qexport.ir.arith import dynamic_params, dynamic_quantize, fake_quant
from qexport.ir.graph import QDType, QuantSpec


def test_rule_widens_the_range_to_zero_and_picks_the_nearer_zero_point():
    rows = np.array([[0.5, 1.0, 2.0], [-3.0, -1.0, -0.5], [-1.0, 0.0, 3.0]], np.float32)
    multiplier, zero, scale = dynamic_params(rows, axis=-1)
    # [0, 2]: m = 255/2, zero point from the min side (-128); [-3, 0]: from the max side (127)
    assert multiplier[0, 0] == np.float32(127.5) and zero[0, 0] == -128
    assert multiplier[1, 0] == np.float32(85.0) and zero[1, 0] == 127
    assert zero[2, 0] == np.rint(np.float32(-128) + np.float32(1.0) * np.float32(255 / 4))
    assert scale.dtype == np.float32 and np.array_equal(scale, np.float32(1) / multiplier)


def test_all_zero_row_quantizes_with_multiplier_one_and_stays_zero():
    rows = np.zeros((1, 4), np.float32)
    multiplier, zero, _ = dynamic_params(rows, axis=-1)
    assert multiplier[0, 0] == 1.0 and zero[0, 0] == 127  # the max side wins ties, as in XNNPACK
    q, zero, scale = dynamic_quantize(rows, axis=-1)
    assert np.all((q.astype(np.int32) - zero) * scale == 0)


def test_row_extremes_round_trip_and_zero_is_exact():
    rng = np.random.default_rng(1)
    rows = (rng.standard_normal((64, 384)) * rng.uniform(0.1, 30, (64, 1))).astype(np.float32)
    rows[:, 7] = 0.0
    q, zero, scale = dynamic_quantize(rows, axis=-1)
    back = (q.astype(np.int32) - zero) * scale
    assert q.dtype == np.int8 and np.all(back[:, 7] == 0)
    assert np.all(np.abs(back - rows) <= scale * 0.5 + 1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quant_uses_the_specs_rule(symmetric):
    spec = QuantSpec(
        QDType.INT8, np.array(1.0, np.float32), np.array(0, np.int32), -1, True, symmetric=symmetric
    )
    x = np.array([[0.1, 0.2, 2.54]], np.float32)  # all positive: asymmetric spends all 256 steps
    error = np.abs(fake_quant(x, spec) - x).max()
    assert error < (2.54 / 127 / 2 + 1e-7 if symmetric else 2.54 / 255 / 2 + 1e-7)
