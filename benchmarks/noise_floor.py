"""How far from the IR simulation a backend lands when its float kernels differ by one ulp.

Every runtime computes LayerNorm, GELU, softmax and tanh with its own float32 arithmetic
(summation order, exp/erf approximations): ~60 % of a LayerNorm's outputs differ by at least
one ulp between onnxruntime, torch and the reference executor (measured on BERT-like rows).
In an int8 graph each such difference can flip a later rounding by one step, and the flips
multiply through six layers of re-quantization. ``float_ulp_floor`` measures that effect on
the IR itself: the reference executor, with each float-island output multiplied by
``1 + 2**-24 * N(0, 1)`` (about one ulp of relative noise, seeded), against the clean run. A backend
cannot be expected to agree with the IR much better than this, however exact its lowering.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from qexport.ir.graph import Graph
from qexport.ir.ops import Op
from qexport.reference import executor

FLOAT_ISLANDS = (Op.LAYER_NORM, Op.GELU, Op.SOFTMAX, Op.TANH)
_ULP = np.float32(2.0**-24)


@contextmanager
def ulp_noise(seed: int = 0, ops: tuple[Op, ...] = FLOAT_ISLANDS) -> Iterator[None]:
    """Within the block, the reference kernels of ``ops`` add one ulp of relative noise."""
    rng = np.random.default_rng(seed)
    original = {op: executor.KERNELS[op] for op in ops}

    def noisy(kernel: Callable[..., Any]) -> Callable[..., Any]:
        def run(args: Any, attrs: Any, dims: Any) -> np.ndarray:
            out = np.asarray(kernel(args, attrs, dims), np.float32)
            return (out * (1 + _ULP * rng.standard_normal(out.shape).astype(np.float32))).astype(np.float32)

        return run

    try:
        for op in ops:
            executor.KERNELS[op] = noisy(original[op])
        yield
    finally:
        executor.KERNELS.update(original)


def float_ulp_floor(
    graph: Graph,
    clean: np.ndarray,
    run_pooled: Callable[[Graph], np.ndarray],
    parity: Callable[..., dict[str, float]],
) -> float:
    """SQNR (dB) of the IR run with one-ulp float-island noise against ``clean``, the clean IR
    run's pooled outputs (the caller has them already)."""
    with ulp_noise():
        noisy = run_pooled(graph)
    return parity(noisy, clean)["sqnr_db"]
