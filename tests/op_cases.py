"""The op table's rows: one small hand-built IR graph per IR op (tests/test_ops.py runs them).

Every graph reads one input, ``input_ids`` [batch, SEQ] (the one input every backend takes), and
makes its float operands with embedding Gathers from constant tables whose rows are the edge
cases of quantization: all zero, constant, one-signed, tiny, BERT-sized outliers. The op under
test reads those operands and writes the graph's output ``y``.

Adding an op: one function here, decorated with ``@case(Op.X)``; ``extra_forms`` names the
recipes (besides float, qdq and npu-int16) that quantize that op in their own way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qexport.ir.graph import Graph, Node, ValueInfo
from qexport.ir.ops import Op
from qexport.reference.kernels import KERNELS

SEQ = 8
WIDTH = 16
VOCAB = 12


def edge_rows(width: int, seed: int, positive: bool = False) -> np.ndarray:
    """[VOCAB, width] rows: the edge cases of run-time and static quantization, then random ones."""
    rng = np.random.default_rng(seed)
    rows = [
        np.zeros(width),  # all zero
        np.full(width, 0.75),  # constant, positive
        np.full(width, -3.0),  # constant, negative
        rng.uniform(0.01, 5.0, width),  # one-signed, positive
        -rng.uniform(0.01, 5.0, width),  # one-signed, negative
        rng.standard_normal(width) * 1e-6,  # tiny
        rng.standard_normal(width) * 40.0,  # BERT-sized outliers
        np.r_[np.zeros(width - 1), 2.54],  # one nonzero
    ]
    rows += [rng.standard_normal(width) for _ in range(VOCAB - len(rows))]
    table = np.stack(rows).astype(np.float32)
    return (np.abs(table) + np.float32(0.5)).astype(np.float32) if positive else table


class CaseGraph:
    """Builds one row's graph; every value's ValueInfo comes from running the reference kernel."""

    def __init__(self) -> None:
        self.graph = Graph(
            inputs={"input_ids": ValueInfo("int64", ("batch", SEQ))},
            outputs={},
            nodes=[],
            constants={},
            values={},
            metadata={"capture": {"seq_len": SEQ}},
        )
        self.sample: dict[str, np.ndarray] = {"input_ids": np.arange(SEQ, dtype=np.int64)[None] % VOCAB}

    def const(self, array: np.ndarray) -> str:
        name = f"c{len(self.graph.constants)}"
        self.graph.constants[name] = array
        self.sample[name] = array
        return name

    def floats(self, width: int = WIDTH, positive: bool = False, edges: bool = True) -> str:
        """A fresh float [batch, SEQ, width] operand: Gather of table rows by the token ids; the
        rows are ``edge_rows`` or (``edges=False``) random rows of scales from 0.1 to 40."""
        seed = len(self.graph.constants)
        if edges:
            rows = edge_rows(width, seed, positive)
        else:
            rng = np.random.default_rng(seed)
            rows = rng.standard_normal((VOCAB, width)) * np.geomspace(0.1, 40.0, VOCAB)[:, None]
        return self.node(Op.GATHER, [self.const(rows.astype(np.float32)), "input_ids"])

    def node(self, op: Op, inputs: list[str], **attrs: object) -> str:
        out = f"v{len(self.graph.nodes)}"
        value = KERNELS[op]([self.sample[i] for i in inputs], attrs, {"batch": 1})
        value = np.asarray(value)
        shape = ("batch", *value.shape[1:]) if value.ndim else ()
        self.graph.values[out] = ValueInfo(str(value.dtype), shape)
        self.graph.nodes.append(Node(f"n{len(self.graph.nodes)}_{op.value}", op, inputs, [out], attrs))
        self.sample[out] = value
        return out


@dataclass(frozen=True)
class Case:
    name: str
    op: Op
    build: Callable[[CaseGraph], str]
    extra_forms: tuple[str, ...] = ()

    def graph(self) -> Graph:
        g = CaseGraph()
        g.graph.outputs["y"] = self.build(g)
        g.graph.validate()
        return g.graph


CASES: list[Case] = []


def case(op: Op, name: str = "", extra_forms: tuple[str, ...] = ()) -> Callable[..., object]:
    def register(build: Callable[[CaseGraph], str]) -> Callable[[CaseGraph], str]:
        CASES.append(Case(name or op.value, op, build, extra_forms))
        return build

    return register


def _mask_bool(g: CaseGraph, op: Op = Op.EQUAL) -> str:
    """[batch, SEQ, 1] bool: which tokens are id 3 (or are not)."""
    hit = g.node(op, ["input_ids", g.const(np.array(3, np.int64))])
    return g.node(Op.UNSQUEEZE, [hit], axes=[2])


@case(Op.GATHER, extra_forms=("dynamic",))
def _gather(g):
    return g.floats()


@case(Op.LINEAR, extra_forms=("int8", "int8-full", "dynamic", "torch-dynamic", "int16x8", "weight-only"))
def _linear(g):
    rng = np.random.default_rng(11)
    weight = g.const((rng.standard_normal((12, WIDTH)) * 0.3).astype(np.float32))
    bias = g.const(rng.standard_normal(12).astype(np.float32))
    return g.node(Op.LINEAR, [g.floats(), weight, bias])


@case(Op.MATMUL)
def _matmul(g):
    keys = g.node(Op.TRANSPOSE, [g.floats()], perm=[0, 2, 1])
    return g.node(Op.MATMUL, [g.floats(), keys])


for _op in (Op.ADD, Op.SUB, Op.MUL):
    case(_op)(lambda g, op=_op: g.node(op, [g.floats(), g.floats()]))


@case(Op.DIV)
def _div(g):
    return g.node(Op.DIV, [g.floats(), g.floats(positive=True)])


@case(Op.POW)
def _pow(g):
    return g.node(Op.POW, [g.floats(positive=True), g.const(np.array(2.0, np.float32))])


@case(Op.LAYER_NORM)
def _layer_norm(g):
    rng = np.random.default_rng(12)
    weight = g.const((1 + 0.1 * rng.standard_normal(WIDTH)).astype(np.float32))
    bias = g.const((0.1 * rng.standard_normal(WIDTH)).astype(np.float32))
    return g.node(Op.LAYER_NORM, [g.floats(), weight, bias], eps=1e-12, num_axes=1)


@case(Op.LAYER_NORM, name="LayerNorm-varied-tokens")
def _layer_norm_varied(g):  # the integer form's row: constant tokens (zero variance) stop its calibration
    return g.node(Op.LAYER_NORM, [g.floats(edges=False)], eps=1e-12, num_axes=1)


@case(Op.GELU)
def _gelu(g):
    return g.node(Op.GELU, [g.floats()], approximate="none")


@case(Op.GELU, name="Gelu-tanh")
def _gelu_tanh(g):
    return g.node(Op.GELU, [g.floats()], approximate="tanh")


@case(Op.SOFTMAX)
def _softmax(g):
    return g.node(Op.SOFTMAX, [g.floats()], axis=-1)


for _op in (Op.TANH, Op.RELU, Op.EXP, Op.ERF, Op.NEG, Op.ABS):
    case(_op)(lambda g, op=_op: g.node(op, [g.floats()]))
for _op in (Op.SQRT, Op.RSQRT):
    case(_op)(lambda g, op=_op: g.node(op, [g.floats(positive=True)]))


@case(Op.RESHAPE)
def _reshape(g):
    return g.node(Op.RESHAPE, [g.floats()], shape=[-1, SEQ, 4, WIDTH // 4])


@case(Op.TRANSPOSE)
def _transpose(g):
    return g.node(Op.TRANSPOSE, [g.floats()], perm=[0, 2, 1])


@case(Op.SLICE)
def _slice(g):
    return g.node(Op.SLICE, [g.floats()], axis=2, start=2, end=10, step=2)


@case(Op.CONCAT)
def _concat(g):
    return g.node(Op.CONCAT, [g.floats(), g.floats(8)], axis=-1)


@case(Op.EXPAND)
def _expand(g):
    column = g.node(Op.SLICE, [g.floats()], axis=2, start=0, end=1, step=1)
    return g.node(Op.EXPAND, [column], shape=[-1, SEQ, WIDTH])


@case(Op.SQUEEZE)
def _squeeze(g):
    column = g.node(Op.SLICE, [g.floats()], axis=2, start=3, end=4, step=1)
    return g.node(Op.SQUEEZE, [column], axes=[2])


@case(Op.UNSQUEEZE)
def _unsqueeze(g):
    return g.node(Op.UNSQUEEZE, [g.floats()], axes=[1])


@case(Op.WHERE)
def _where(g):
    return g.node(Op.WHERE, [_mask_bool(g), g.floats(), g.floats()])


@case(Op.CAST)
def _cast(g):  # BERT's mask: int ids -> float
    return g.node(Op.CAST, ["input_ids"], to="float32")


for _op in (Op.REDUCE_MEAN, Op.REDUCE_MAX, Op.REDUCE_SUM):
    case(_op)(lambda g, op=_op: g.node(op, [g.floats()], axes=[-1], keepdims=True))


@case(Op.CUMSUM)
def _cumsum(g):  # RoBERTa's position ids: cumsum of the non-padding mask
    kept = g.node(Op.CAST, [g.node(Op.NOT_EQUAL, ["input_ids", g.const(np.array(0, np.int64))])], to="int32")
    return g.node(Op.CUMSUM, [kept], axis=1)


for _op in (Op.EQUAL, Op.NOT_EQUAL):
    case(_op)(lambda g, op=_op: g.node(Op.CAST, [_mask_bool(g, op)], to="float32"))


@case(Op.REQUANTIZE)
def _requantize(g):
    return g.node(Op.REQUANTIZE, [g.floats()])


@case(Op.PAD)
def _pad(g):
    return g.node(Op.PAD, [g.floats()], pads=[[0, 0], [0, 2], [0, 0]], value=0.0)


@case(Op.ATTENTION)
def _attention(g):
    mask = g.node(Op.UNSQUEEZE, [g.floats(SEQ)], axes=[1])  # [batch, 1, SEQ, SEQ]
    qkv = [g.floats(), g.floats(), g.floats()]
    return g.node(Op.ATTENTION, [*qkv, mask], heads=2, head_dim=WIDTH // 2, scale=0.35)


missing = set(Op) - {c.op for c in CASES}
if missing:  # every IR op has a row
    raise ImportError(f"op table rows missing for {sorted(m.value for m in missing)}")
