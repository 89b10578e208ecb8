"""The IR's op set. Each member's docstring is its semantics; backends lower exactly this.

Conventions for every op:
- Tensors are numpy-like: row-major, shapes may hold symbolic dims (see ``symbols``).
- Binary elementwise ops broadcast with numpy rules; both inputs share a dtype.
- Float math is float32. Attention is *decomposed* at capture (MatMul, Mul, Add, Softmax,
  MatMul) so every backend sees the same primitive ops; the additive attention mask is an
  ordinary input-dependent tensor (0 for kept keys, float32 min for padded keys).
"""

from __future__ import annotations

from enum import StrEnum


class Op(StrEnum):
    """One member per IR op. The value is the name written to ``.qir`` files."""

    GATHER = "Gather"
    """(table[N, ...], indices int) -> table[indices]: rows of ``table`` picked along axis 0.
    Embedding lookup. Indices out of [0, N) are an error in the reference executor."""

    LINEAR = "Linear"
    """(x[..., K], weight[M, K], bias[M]?) -> x @ weight.T + bias, shape [..., M]."""

    MATMUL = "MatMul"
    """(a[..., N, K], b[..., K, M]) -> [..., N, M], numpy.matmul semantics (batch dims broadcast)."""

    ADD = "Add"
    """(a, b) -> a + b, broadcasting."""

    SUB = "Sub"
    """(a, b) -> a - b, broadcasting."""

    MUL = "Mul"
    """(a, b) -> a * b, broadcasting."""

    DIV = "Div"
    """(a, b) -> a / b, broadcasting, true (float) division."""

    POW = "Pow"
    """(a, b) -> a ** b, broadcasting."""

    LAYER_NORM = "LayerNorm"
    """(x, weight?, bias?) attrs ``eps``, ``num_axes``: normalize over the last ``num_axes`` dims
    with biased variance, ``(x - mean) / sqrt(var + eps) * weight + bias``."""

    GELU = "Gelu"
    """(x) attr ``approximate`` in {"none", "tanh"}: 0.5·x·(1 + erf(x/√2)), or the tanh form."""

    SOFTMAX = "Softmax"
    """(x) attr ``axis``: exp(x - max) / sum(exp(x - max)) along ``axis``."""

    TANH = "Tanh"
    """(x) -> tanh(x)."""

    RELU = "Relu"
    """(x) -> max(x, 0)."""

    SQRT = "Sqrt"
    """(x) -> sqrt(x)."""

    RSQRT = "Rsqrt"
    """(x) -> 1 / sqrt(x)."""

    EXP = "Exp"
    """(x) -> exp(x)."""

    ERF = "Erf"
    """(x) -> erf(x)."""

    NEG = "Neg"
    """(x) -> -x."""

    ABS = "Abs"
    """(x) -> |x|."""

    RESHAPE = "Reshape"
    """(x) attr ``shape``: list of ints or symbolic expressions; at most one -1 (inferred)."""

    TRANSPOSE = "Transpose"
    """(x) attr ``perm``: output dim i is input dim perm[i]."""

    SLICE = "Slice"
    """(x) attrs ``axis``, ``start``, ``end``, ``step`` (step > 0): Python slicing along one axis,
    bounds clamped to the dim. ``end`` may be a symbolic expression."""

    CONCAT = "Concat"
    """(x0, x1, ...) attr ``axis``: join along ``axis``."""

    EXPAND = "Expand"
    """(x) attr ``shape``: broadcast to ``shape`` (same rank); -1 keeps the input dim."""

    SQUEEZE = "Squeeze"
    """(x) attr ``axes``: drop those size-1 axes."""

    UNSQUEEZE = "Unsqueeze"
    """(x) attr ``axes``: insert size-1 axes at these output positions (ascending)."""

    WHERE = "Where"
    """(cond bool, a, b) -> cond ? a : b, broadcasting."""

    CAST = "Cast"
    """(x) attr ``to`` (an IR dtype name): numpy ``astype``; float->int truncates toward zero."""

    REDUCE_MEAN = "ReduceMean"
    """(x) attrs ``axes``, ``keepdims``: arithmetic mean over ``axes``."""

    REDUCE_MAX = "ReduceMax"
    """(x) attrs ``axes``, ``keepdims``: maximum over ``axes``."""

    REDUCE_SUM = "ReduceSum"
    """(x) attrs ``axes``, ``keepdims``: sum over ``axes``."""

    CUMSUM = "CumSum"
    """(x) attr ``axis``: inclusive cumulative sum along ``axis``."""

    EQUAL = "Equal"
    """(a, b) -> bool a == b, broadcasting."""

    NOT_EQUAL = "NotEqual"
    """(a, b) -> bool a != b, broadcasting."""

    REQUANTIZE = "Requantize"
    """(x) -> x. Identity on values; it exists so that a value can change QuantSpec between two
    integer precisions (int8 -> int16 or back) in full-integer graphs: its output carries the
    second spec (docs/integer.md). Backends lower it to an integer requantization. Made by
    passes, never captured."""

    PAD = "Pad"
    """(x) attrs ``pads`` (list of [before, after] per axis, first axis first), ``value``:
    constant padding."""

    ATTENTION = "Attention"
    """(q, k, v [b, s, heads·dim], mask [b, 1, 1 or s, s]?) attrs ``heads``, ``head_dim``, ``scale``:
    per head h, softmax(q_h @ k_hᵀ · scale + mask) @ v_h, the heads joined back to [b, s, heads·dim].
    Made only by the attention-fusion pass (``qexport.ir.attention.fuse_attention``) that a backend
    with a fused kernel runs before lowering; capture and ``.qir`` files keep attention decomposed."""


DTYPES: frozenset[str] = frozenset({"float32", "int64", "int32", "int16", "int8", "uint8", "bool"})
"""Tensor dtypes a value may have (quantized values additionally carry a QuantSpec)."""
