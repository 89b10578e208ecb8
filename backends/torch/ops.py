"""One small torch function per IR op (float semantics); Linear has its own module.

Each takes (inputs, attrs, dims) like the reference kernels, with torch tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from qexport.backends import registrar
from qexport.ir.ops import Op
from qexport.ir.symbols import evaluate

TorchOp = Callable[[list[Any], dict[str, Any], dict[str, Any]], torch.Tensor]
TORCH_OPS: dict[Op, TorchOp] = {}
_DTYPES = {
    "float32": torch.float32,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
}


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)`` as the one op it is: torch.export puts an ``_assert_tensor_metadata``
    before every ``.to()``, and the program runs op by op (29 extra ops per MiniLM call)."""
    return torch.ops.aten._to_copy.default(x, dtype=dtype)


op = registrar(TORCH_OPS)  # @op(Op.X, ...) files a torch function under its IR ops


TORCH_OPS.update(
    {
        Op.ADD: lambda xs, a, d: xs[0] + xs[1],
        Op.SUB: lambda xs, a, d: xs[0] - xs[1],
        Op.MUL: lambda xs, a, d: xs[0] * xs[1],
        Op.DIV: lambda xs, a, d: xs[0] / xs[1],
        Op.POW: lambda xs, a, d: torch.pow(xs[0], xs[1]),
        Op.MATMUL: lambda xs, a, d: torch.matmul(xs[0], xs[1]),
        Op.TANH: lambda xs, a, d: torch.tanh(xs[0]),
        Op.RELU: lambda xs, a, d: torch.relu(xs[0]),
        Op.SQRT: lambda xs, a, d: torch.sqrt(xs[0]),
        Op.RSQRT: lambda xs, a, d: torch.rsqrt(xs[0]),
        Op.EXP: lambda xs, a, d: torch.exp(xs[0]),
        Op.ERF: lambda xs, a, d: torch.erf(xs[0]),
        Op.NEG: lambda xs, a, d: torch.neg(xs[0]),
        Op.ABS: lambda xs, a, d: torch.abs(xs[0]),
        Op.EQUAL: lambda xs, a, d: torch.eq(xs[0], xs[1]),
        Op.NOT_EQUAL: lambda xs, a, d: torch.ne(xs[0], xs[1]),
        Op.WHERE: lambda xs, a, d: torch.where(xs[0], xs[1], xs[2]),
        Op.GELU: lambda xs, a, d: torch.nn.functional.gelu(xs[0], approximate=a.get("approximate", "none")),
        Op.SOFTMAX: lambda xs, a, d: torch.softmax(xs[0], dim=int(a["axis"])),
        Op.TRANSPOSE: lambda xs, a, d: xs[0].permute(*a["perm"]),
        Op.CONCAT: lambda xs, a, d: torch.cat([x for x in xs if x is not None], dim=int(a["axis"])),
        Op.CAST: lambda xs, a, d: cast(xs[0], _DTYPES[a["to"]]),
        Op.CUMSUM: lambda xs, a, d: torch.cumsum(xs[0], dim=int(a["axis"]), dtype=xs[0].dtype),
        Op.REDUCE_MEAN: lambda xs, a, d: torch.mean(xs[0], dim=list(a["axes"]), keepdim=bool(a["keepdims"])),
        Op.REDUCE_MAX: lambda xs, a, d: torch.amax(xs[0], dim=list(a["axes"]), keepdim=bool(a["keepdims"])),
        Op.REDUCE_SUM: lambda xs, a, d: torch.sum(xs[0], dim=list(a["axes"]), keepdim=bool(a["keepdims"])),
    }
)


def exact_gelu(x: torch.Tensor) -> torch.Tensor:
    """The IR's GELU bit for bit: erf in float64, rounded to float32 once (docs/ir.md).

    torch's float32 erf-GELU differs from it on ~75-86 % of outputs (1-9 ulp near zero, up to
    ~5e-7 for x in 1..10), and each difference can flip the rounding of the quantizer that
    reads GELU's output. The module runs this where that is so (docs/backend-torch.md, "GELU in
    float64"); it costs ~0.55 ms per GELU at seq 128, 5x torch's float32 kernel. Spelled out
    as the reference kernel computes it (torch's float64 GELU op, a scalar erf, is ~30 %
    slower). Below x = -5.9, where 1 + erf cancels, torch's vectorized float64 erf and
    scipy's may round the tiny result (|GELU| < 1e-8) differently; the quantizer after it maps
    such values to its zero point either way.
    """
    wide = cast(x, torch.float64)
    return cast((wide * 0.5) * (torch.erf(wide / math.sqrt(2.0)) + 1.0), x.dtype)


def exact_softmax(x: torch.Tensor, attrs: Mapping[str, Any]) -> torch.Tensor:
    """The IR's Softmax bit for bit: in float64, rounded to float32 once (docs/ir.md).

    torch's float32 softmax rounds an output step of an 8-bit quantizer (1/256) the other way
    now and then; in full-integer graphs every layer after it grows that flip (learned MiniLM
    npu-int8: the first value of the .pt2 to leave its IR, docs/backend-torch.md)."""
    return cast(torch.softmax(cast(x, torch.float64), dim=int(attrs["axis"])), x.dtype)


def exact_layer_norm(xs: list[Any], attrs: Mapping[str, Any]) -> torch.Tensor:
    """The IR's LayerNorm bit for bit: normalized in float64, rounded to float32 once.

    torch's float32 kernel differs from it on about a third of outputs (its own summation
    order), enough to flip the uint8 quantizers after it (docs/backend-torch.md, "LayerNorm in
    float64"). In float64 the order no longer shows once rounded.
    """
    x, w, b = ([*xs, None, None])[:3]
    shape = list(x.shape[-int(attrs["num_axes"]) :])
    wide = [None if v is None else cast(v, torch.float64) for v in (x, w, b)]
    eps = float(np.float32(attrs["eps"]))  # the float32 it is stored as, as the reference reads it
    return cast(torch.nn.functional.layer_norm(wide[0], shape, wide[1], wide[2], eps=eps), x.dtype)


@op(Op.GATHER)
def gather(xs, a, d):
    return torch.nn.functional.embedding(xs[1], xs[0]) if xs[0].ndim == 2 else xs[0][xs[1]]


@op(Op.LAYER_NORM)
def layer_norm(xs, a, d):
    n = int(a["num_axes"])
    shape = list(xs[0].shape[-n:])
    w = xs[1] if len(xs) > 1 else None
    b = xs[2] if len(xs) > 2 else None
    return torch.nn.functional.layer_norm(xs[0], shape, w, b, eps=float(a["eps"]))


@op(Op.RESHAPE)
def reshape(xs, a, d):
    return xs[0].reshape([evaluate(s, d) for s in a["shape"]])


@op(Op.REQUANTIZE)
def requantize(xs, a, d):
    return xs[0]  # identity; the output's spec (applied after every op) requantizes


@op(Op.SLICE)
def slice_(xs, a, d):
    x = xs[0]
    index = [slice(None)] * x.ndim
    index[int(a["axis"])] = slice(evaluate(a["start"], d), evaluate(a["end"], d), int(a["step"]))
    return x[tuple(index)]


@op(Op.EXPAND)
def expand(xs, a, d):
    return xs[0].expand([evaluate(s, d) for s in a["shape"]])


@op(Op.SQUEEZE)
def squeeze(xs, a, d):
    x = xs[0]
    for axis in sorted(a["axes"], reverse=True):
        x = x.squeeze(axis)
    return x


@op(Op.UNSQUEEZE)
def unsqueeze(xs, a, d):
    x = xs[0]
    for axis in sorted(a["axes"]):
        x = x.unsqueeze(axis)
    return x


@op(Op.PAD)
def pad(xs, a, d):
    flat: list[int] = []
    for before, after in reversed(a["pads"]):
        flat += [int(before), int(after)]
    return torch.nn.functional.pad(xs[0], flat, value=float(a["value"]))


@op(Op.ATTENTION)
def attention(xs, a, d):
    q, k, v = xs[:3]
    heads, dim = int(a["heads"]), int(a["head_dim"])

    def split(x):  # [b, s, heads * dim] -> [b, heads, s, dim]
        return x.reshape(x.shape[0], x.shape[1], heads, dim).transpose(1, 2)

    scores = torch.matmul(split(q), split(k).transpose(2, 3))
    if float(a["scale"]) != 1.0:
        scores = scores * float(a["scale"])
    if len(xs) > 3 and xs[3] is not None:
        scores = scores + xs[3]
    context = torch.matmul(torch.softmax(scores, dim=-1), split(v)).transpose(1, 2)
    return context.reshape(q.shape[0], q.shape[1], heads * dim)


missing = set(Op) - set(TORCH_OPS) - {Op.LINEAR}
if missing:
    raise ImportError(f"torch lowerings missing for {sorted(m.value for m in missing)}")
