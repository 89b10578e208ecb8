"""GELU written in the float32 operations every runtime rounds alike.

Decided in docs/decisions/0008; the IR's side in docs/ir.md ("GELUs read by int16 quantizers").

Each runtime brings its own GELU: onnxruntime's, XNNPACK's and LiteRT's erf differ from the
correctly rounded result (the reference's) on about half the values, by an ulp or more. Where an
int16 quantizer reads the GELU (``int8-mixed``'s int16 FFN inputs), an int16 step is 256 times
finer than an 8-bit one, an ulp lands on another step often enough, and the 8-bit quantizers of
the layers after it grow those flips: all-MiniLM-L6-v2's ``int8-mixed`` files sat 34-35 dB from
their IR with exact Linears, 37-44 dB with this form.

The rational form uses only operations IEEE 754 rounds exactly once — ``+ - * /``, ``abs``, ``relu``
— in a fixed order, so every runtime (and the reference's numpy kernels) computes the same bits:

    clamp(v, c) = v / (relu(|v| - c) * (1/c) + 1)      (v where |v| <= c, about ±c beyond)
    t = clamp(x * (1/sqrt 2), 4);  s = t*t
    r = P(s) / Q(s)                                      (Horner, degree 5 / 5, all coefficients > 0)
    gelu = (x * 0.5) * (clamp(t*r, 1) + 1)

``erf(t) ≈ t·P(t²)/Q(t²)`` on ``|t| <= 4`` (erf(4) rounds to 1 in float32). It is within 3 ulps
of the exact GELU where ``x > 0.01`` and within 1.5e-6 everywhere — far inside any quantization
step it feeds. A clamp is exact where it does not bite (``relu`` of a negative is 0, and the
division by 1 exact) and finite for every finite ``x``.
"""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import Graph, Node, ValueInfo
from qexport.ir.ops import Op

NUMERATOR = np.array(
    ["1.1283791", "0.19365425", "0.053149592", "0.0038983119", "0.00028667809", "0.0000020084722"], np.float32
)
"""P's coefficients from s**0 up, as stored (float32): ``fit()`` rounded."""
DENOMINATOR = np.array(
    ["1.", "0.50495356", "0.115426116", "0.015234161", "0.0011926101", "0.000037757134"], np.float32
)
"""Q's coefficients from s**0 up (Q(0) = 1)."""
CLAMP = 4.0
"""t = x/√2 is clamped to ±4, where erf(t) is 1 in float32; P/Q is fit on t² in [0, 16]."""


def fit(p: int = 5, q: int = 5, rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """How ``NUMERATOR``/``DENOMINATOR`` were made: a least-squares fit of ``erf(√s)/√s`` on
    ``[0, CLAMP²]`` in relative error, linearized and reweighted by the last round's Q
    (Sanathanan-Koerner). float64; tests/test_gelu_rational.py checks it gives the stored ones."""
    from scipy.special import erf

    s = np.linspace(0.0, CLAMP**2, 20001)
    t = np.sqrt(s)
    ratio = np.where(s > 0, erf(t) / np.where(t > 0, t, 1.0), 2.0 / np.sqrt(np.pi))
    powers_p = s[:, None] ** np.arange(p + 1)
    powers_q = s[:, None] ** np.arange(1, q + 1)
    denominator = np.ones_like(s)
    for _ in range(rounds):
        weight = (1.0 / (ratio * denominator))[:, None]
        system = np.hstack([powers_p, -ratio[:, None] * powers_q]) * weight
        solution, *_ = np.linalg.lstsq(system, ratio * weight[:, 0], rcond=None)
        numerator, denominator_coeffs = solution[: p + 1], np.r_[1.0, solution[p + 1 :]]
        denominator = powers_q @ denominator_coeffs[1:] + 1.0
    return numerator, denominator_coeffs


class _Emitter:
    """Appends float32 nodes and scalar constants named after one GELU node."""

    def __init__(self, graph: Graph, gelu: Node) -> None:
        self.graph, self.prefix = graph, f"{gelu.name}.rational"
        self.shape = graph.values[gelu.outputs[0]].shape
        self.nodes: list[Node] = []
        self.constants = 0

    def const(self, value: float | np.float32) -> str:
        name = f"{self.prefix}.c{self.constants}"
        self.constants += 1
        self.graph.constants[name] = np.asarray(value, np.float32)
        return name

    def op(self, op: Op, *inputs: str, out: str | None = None) -> str:
        name = f"{self.prefix}.{len(self.nodes)}"
        out = out or name
        self.graph.values.setdefault(out, ValueInfo("float32", self.shape))
        self.nodes.append(Node(name, op, list(inputs), [out]))
        return out

    def horner(self, coeffs: np.ndarray, s: str) -> str:
        acc = self.op(Op.ADD, self.op(Op.MUL, s, self.const(coeffs[-1])), self.const(coeffs[-2]))
        for c in coeffs[-3::-1]:
            acc = self.op(Op.ADD, self.op(Op.MUL, acc, s), self.const(c))
        return acc

    def clamp(self, v: str, limit: float) -> str:
        """v / (1 + relu(|v| - limit)): v itself where |v| <= limit (the relu is 0, the division
        by 1 exact), about ±limit above it for any finite v; exactly ±limit up to 2·limit."""
        excess = self.op(Op.RELU, self.op(Op.SUB, self.op(Op.ABS, v), self.const(limit)))
        return self.op(
            Op.DIV, v, self.op(Op.ADD, self.op(Op.MUL, excess, self.const(1.0 / limit)), self.const(1.0))
        )


def rewrite(graph: Graph, gelu: Node) -> None:
    """Replace the erf GELU node ``gelu`` (in place) by the rational form; its output keeps its name."""
    if gelu.op is not Op.GELU or gelu.attrs.get("approximate", "none") != "none":
        raise ValueError(f"{gelu.name} is not an erf GELU")
    e = _Emitter(graph, gelu)
    x = gelu.inputs[0]
    t = e.clamp(e.op(Op.MUL, x, e.const(1.0 / np.sqrt(2.0))), CLAMP)
    s = e.op(Op.MUL, t, t)
    ratio = e.op(Op.DIV, e.horner(NUMERATOR, s), e.horner(DENOMINATOR, s))
    erf = e.clamp(e.op(Op.MUL, t, ratio), 1.0)
    half = e.op(Op.MUL, x, e.const(0.5))
    e.op(Op.MUL, half, e.op(Op.ADD, erf, e.const(1.0)), out=gelu.outputs[0])
    at = graph.nodes.index(gelu)
    graph.nodes[at : at + 1] = e.nodes
