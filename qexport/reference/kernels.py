"""numpy implementation of every IR op — the golden semantics backends are compared against.

One small function per op in ``KERNELS``. Values are float32. An op that is one rounding in
float32 (add, mul, div, sqrt, ...) is computed in float32; LayerNorm, Softmax and Gelu, which
every runtime builds from several roundings and its own approximations, are computed in float64
and rounded to float32 once: the exact result, so that what a backend differs by is its own
float error alone (docs/ir.md, "Float semantics").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import erf as _erf

from qexport.errors import IRError
from qexport.ir.ops import Op
from qexport.ir.symbols import evaluate

Array = np.ndarray
Kernel = Callable[[Sequence[Any], Mapping[str, Any], Mapping[str, int]], Array]
"""(inputs — arrays, None for an absent optional input —, attrs, dim bindings) -> output."""
KERNELS: dict[Op, Kernel] = {}


def kernel(op: Op) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        KERNELS[op] = fn
        return fn

    return register


def _f32(x: Array) -> Array:
    return x.astype(np.float32, copy=False)


@kernel(Op.GATHER)
def gather(xs, attrs, dims):
    table, idx = xs
    assert table is not None and idx is not None
    if idx.size and (idx.min() < 0 or idx.max() >= table.shape[0]):
        raise IRError(f"Gather index out of range [0, {table.shape[0]})")
    return np.take(table, idx, axis=0)


@kernel(Op.LINEAR)
def linear(xs, attrs, dims):
    x, w, b = ([*list(xs), None])[:3]
    assert x is not None and w is not None
    y = np.matmul(x, w.T)
    return y + b if b is not None else y


@kernel(Op.MATMUL)
def matmul(xs, attrs, dims):
    return np.matmul(xs[0], xs[1])


def _binary(fn: Callable[[Array, Array], Array]) -> Kernel:
    return lambda xs, attrs, dims: fn(xs[0], xs[1])


KERNELS[Op.ADD] = _binary(np.add)
KERNELS[Op.SUB] = _binary(np.subtract)
KERNELS[Op.MUL] = _binary(np.multiply)
KERNELS[Op.POW] = _binary(np.power)
KERNELS[Op.EQUAL] = _binary(np.equal)
KERNELS[Op.NOT_EQUAL] = _binary(np.not_equal)


@kernel(Op.DIV)
def div(xs, attrs, dims):
    a, b = xs
    assert a is not None and b is not None
    out = np.true_divide(a, b)
    return out.astype(np.result_type(a.dtype, b.dtype, np.float32), copy=False)


@kernel(Op.LAYER_NORM)
def layer_norm(xs, attrs, dims):
    x, w, b = ([*list(xs), None, None])[:3]
    assert x is not None
    axes = tuple(range(-int(attrs["num_axes"]), 0))
    wide = x.astype(np.float64)
    centered = wide - wide.mean(axis=axes, keepdims=True)
    var = np.mean(np.square(centered), axis=axes, keepdims=True)
    y = centered / np.sqrt(var + float(np.float32(attrs["eps"])))  # eps as the float32 it is stored as
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return _f32(y)


@kernel(Op.GELU)
def gelu(xs, attrs, dims):
    x = xs[0]
    assert x is not None
    if attrs.get("approximate", "none") == "tanh":
        inner = np.float32(np.sqrt(2.0 / np.pi)) * (x + np.float32(0.044715) * x**3)
        return _f32(np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner)))
    # erf in float64 then rounded: matches torch's float32 erf to ~1 ulp.
    return _f32(0.5 * x * (1.0 + _erf(x.astype(np.float64) / np.sqrt(2.0))))


@kernel(Op.SOFTMAX)
def softmax(xs, attrs, dims):
    x = xs[0]
    assert x is not None
    axis = int(attrs["axis"])
    wide = x.astype(np.float64)
    e = np.exp(wide - wide.max(axis=axis, keepdims=True))
    return _f32(e / e.sum(axis=axis, keepdims=True))


def _unary(fn: Callable[[Array], Array]) -> Kernel:
    return lambda xs, attrs, dims: _f32(fn(xs[0]))


KERNELS[Op.TANH] = _unary(np.tanh)
KERNELS[Op.SQRT] = _unary(np.sqrt)
KERNELS[Op.RSQRT] = _unary(lambda x: np.float32(1.0) / np.sqrt(x))
KERNELS[Op.EXP] = _unary(np.exp)
KERNELS[Op.ERF] = _unary(lambda x: _erf(x.astype(np.float64)))
KERNELS[Op.RELU] = lambda xs, attrs, dims: np.maximum(xs[0], np.zeros((), xs[0].dtype))
KERNELS[Op.NEG] = lambda xs, attrs, dims: np.negative(xs[0])
KERNELS[Op.ABS] = lambda xs, attrs, dims: np.abs(xs[0])
KERNELS[Op.REQUANTIZE] = lambda xs, attrs, dims: xs[0]


@kernel(Op.RESHAPE)
def reshape(xs, attrs, dims):
    shape = [evaluate(d, dims) for d in attrs["shape"]]
    return np.reshape(xs[0], shape)


@kernel(Op.TRANSPOSE)
def transpose(xs, attrs, dims):
    return np.transpose(xs[0], attrs["perm"])


@kernel(Op.SLICE)
def slice_(xs, attrs, dims):
    x = xs[0]
    assert x is not None
    index = [slice(None)] * x.ndim
    index[int(attrs["axis"])] = slice(
        evaluate(attrs["start"], dims), evaluate(attrs["end"], dims), int(attrs["step"])
    )
    return x[tuple(index)]


@kernel(Op.CONCAT)
def concat(xs, attrs, dims):
    return np.concatenate([x for x in xs if x is not None], axis=int(attrs["axis"]))


@kernel(Op.EXPAND)
def expand(xs, attrs, dims):
    x = xs[0]
    assert x is not None
    target = [evaluate(d, dims) for d in attrs["shape"]]
    shape = [x.shape[i] if d == -1 else d for i, d in enumerate(target)]
    return np.broadcast_to(x, shape)


@kernel(Op.SQUEEZE)
def squeeze(xs, attrs, dims):
    return np.squeeze(xs[0], axis=tuple(attrs["axes"]))


@kernel(Op.UNSQUEEZE)
def unsqueeze(xs, attrs, dims):
    return np.expand_dims(xs[0], axis=tuple(attrs["axes"]))


@kernel(Op.WHERE)
def where(xs, attrs, dims):
    return np.where(xs[0], xs[1], xs[2])


@kernel(Op.CAST)
def cast(xs, attrs, dims):
    x = xs[0]
    assert x is not None
    return x.astype(np.dtype(attrs["to"]))


@kernel(Op.REDUCE_MEAN)
def reduce_mean(xs, attrs, dims):
    x = xs[0]
    assert x is not None
    return _f32(x.mean(axis=tuple(attrs["axes"]), keepdims=bool(attrs["keepdims"]), dtype=np.float32))


@kernel(Op.REDUCE_MAX)
def reduce_max(xs, attrs, dims):
    x = xs[0]
    assert x is not None
    return x.max(axis=tuple(attrs["axes"]), keepdims=bool(attrs["keepdims"]))


@kernel(Op.REDUCE_SUM)
def reduce_sum(xs, attrs, dims):
    x = xs[0]
    assert x is not None
    return x.sum(axis=tuple(attrs["axes"]), keepdims=bool(attrs["keepdims"]), dtype=x.dtype)


@kernel(Op.CUMSUM)
def cumsum(xs, attrs, dims):
    x = xs[0]
    assert x is not None
    return np.cumsum(x, axis=int(attrs["axis"]), dtype=x.dtype)


@kernel(Op.PAD)
def pad(xs, attrs, dims):
    x = xs[0]
    assert x is not None
    return np.pad(x, [tuple(p) for p in attrs["pads"]], constant_values=attrs["value"])


@kernel(Op.ATTENTION)
def attention(xs, attrs, dims):
    q, k, v, mask = ([*list(xs), None])[:4]
    assert q is not None and k is not None and v is not None
    heads, dim = int(attrs["heads"]), int(attrs["head_dim"])

    def split(x: Array) -> Array:  # [b, s, heads * dim] -> [b, heads, s, dim]
        return x.reshape(x.shape[0], x.shape[1], heads, dim).transpose(0, 2, 1, 3)

    scores = np.matmul(split(q), split(k).transpose(0, 1, 3, 2))
    if float(attrs["scale"]) != 1.0:
        scores = scores * np.float32(attrs["scale"])
    if mask is not None:
        scores = scores + mask
    probs = softmax([scores], {"axis": -1}, dims)
    context = np.matmul(probs, split(v)).transpose(0, 2, 1, 3)
    return context.reshape(q.shape[0], q.shape[1], heads * dim)


missing = set(Op) - set(KERNELS)
if missing:  # checked at import: every IR op has golden semantics
    raise ImportError(f"reference kernels missing for {sorted(m.value for m in missing)}")
