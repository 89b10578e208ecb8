"""The IR's ops in torch, differentiable: what the learning stage runs the graph with.

Each function mirrors the numpy golden kernel of the same op (``qexport.reference.kernels``) in
float32 torch. LayerNorm, Softmax and Gelu are computed in float32 here (the reference widens to
float64): learning needs gradients, not the last ulp; the learned graph is judged by the
reference executor afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from qexport.ir.ops import Op
from qexport.ir.symbols import evaluate

Kernel = Callable[[Sequence[Any], Mapping[str, Any], Mapping[str, int]], torch.Tensor]
TORCH_KERNELS: dict[Op, Kernel] = {}


def _kernel(op: Op) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        TORCH_KERNELS[op] = fn
        return fn

    return register


def _linear(xs, attrs, dims):
    x, w, b = ([*list(xs), None])[:3]
    return torch.nn.functional.linear(x, w, b)


def _layer_norm(xs, attrs, dims):
    x, w, b = ([*list(xs), None, None])[:3]
    n = int(attrs["num_axes"])
    return torch.nn.functional.layer_norm(x, tuple(x.shape[-n:]), w, b, float(attrs["eps"]))


def _gelu(xs, attrs, dims):
    return torch.nn.functional.gelu(xs[0], approximate=attrs.get("approximate", "none"))


def _slice(xs, attrs, dims):
    x = xs[0]
    axis = int(attrs["axis"]) % x.ndim
    index = [slice(None)] * x.ndim
    index[axis] = slice(evaluate(attrs["start"], dims), evaluate(attrs["end"], dims), int(attrs["step"]))
    return x[tuple(index)]


def _expand(xs, attrs, dims):
    target = [evaluate(d, dims) for d in attrs["shape"]]
    return xs[0].expand(*target)


def _unsqueeze(xs, attrs, dims):
    x = xs[0]
    for axis in sorted(attrs["axes"]):
        x = x.unsqueeze(axis)
    return x


def _reduce(fn: Callable[..., torch.Tensor]) -> Kernel:
    return lambda xs, attrs, dims: fn(xs[0], dim=tuple(attrs["axes"]), keepdim=bool(attrs["keepdims"]))


def _div(xs, attrs, dims):
    return torch.true_divide(xs[0], xs[1])


def _pad(xs, attrs, dims):
    flat = [p for pair in reversed(attrs["pads"]) for p in pair]
    return torch.nn.functional.pad(xs[0], flat, value=float(attrs["value"]))


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Kernel:
    return lambda xs, attrs, dims: fn(xs[0], xs[1])


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Kernel:
    return lambda xs, attrs, dims: fn(xs[0])


TORCH_KERNELS.update(
    {
        Op.GATHER: lambda xs, attrs, dims: xs[0][xs[1]],
        Op.LINEAR: _linear,
        Op.MATMUL: _binary(torch.matmul),
        Op.ADD: _binary(torch.add),
        Op.SUB: _binary(torch.sub),
        Op.MUL: _binary(torch.mul),
        Op.DIV: _div,
        Op.POW: _binary(torch.pow),
        Op.EQUAL: _binary(torch.eq),
        Op.NOT_EQUAL: _binary(torch.ne),
        Op.LAYER_NORM: _layer_norm,
        Op.GELU: _gelu,
        Op.SOFTMAX: lambda xs, attrs, dims: torch.softmax(xs[0], dim=int(attrs["axis"])),
        Op.TANH: _unary(torch.tanh),
        Op.RELU: _unary(torch.relu),
        Op.SQRT: _unary(torch.sqrt),
        Op.RSQRT: _unary(torch.rsqrt),
        Op.EXP: _unary(torch.exp),
        Op.ERF: _unary(torch.erf),
        Op.NEG: _unary(torch.neg),
        Op.ABS: _unary(torch.abs),
        Op.REQUANTIZE: _unary(lambda x: x),
        Op.RESHAPE: lambda xs, attrs, dims: xs[0].reshape([evaluate(d, dims) for d in attrs["shape"]]),
        Op.TRANSPOSE: lambda xs, attrs, dims: xs[0].permute(*attrs["perm"]),
        Op.SLICE: _slice,
        Op.CONCAT: lambda xs, attrs, dims: torch.cat(
            [x for x in xs if x is not None], dim=int(attrs["axis"])
        ),
        Op.EXPAND: _expand,
        Op.SQUEEZE: lambda xs, attrs, dims: xs[0].squeeze(tuple(attrs["axes"])),
        Op.UNSQUEEZE: _unsqueeze,
        Op.WHERE: lambda xs, attrs, dims: torch.where(xs[0], xs[1], xs[2]),
        Op.CAST: lambda xs, attrs, dims: xs[0].to(getattr(torch, attrs["to"])),  # IR dtype names are torch's
        Op.REDUCE_MEAN: _reduce(torch.mean),
        Op.REDUCE_MAX: _reduce(torch.amax),
        Op.REDUCE_SUM: _reduce(torch.sum),
        Op.CUMSUM: lambda xs, attrs, dims: torch.cumsum(xs[0], dim=int(attrs["axis"])),
        Op.PAD: _pad,
    }
)
