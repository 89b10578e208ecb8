"""One small function per aten op family: how each becomes IR nodes.

Handlers register themselves in ``translator.HANDLERS`` when this module is imported; the
driver in ``translate.py`` calls them with already-mapped arguments (IR values ``V``, constants,
Python scalars or symbolic dims ``Sym``). An aten op without a handler fails the capture,
naming the op and the module it came from.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qexport.errors import CaptureError
from qexport.frontend.translator import HANDLERS, Handler, Translator, V, handles, ir_dtype
from qexport.ir.ops import Op
from qexport.ir.symbols import Dim


def _out(t: Translator, node: Any) -> tuple[str, tuple[Dim, ...]]:
    return ir_dtype(node.meta["val"].dtype, node.name), t.shape_of(node)


def _rank(t: Translator, ref: Any) -> int:
    return len(t.info(ref).shape)


@handles("aten.linear.default")
def _linear(t, node, args, kw):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    if isinstance(w, V):
        raise CaptureError(f"Linear at {t.path} has a computed weight; only constant weights are supported")
    return t.emit(Op.LINEAR, [x, w, b], {}, *_out(t, node))


@handles("aten.embedding.default")
def _embedding(t, node, args, kw):
    return t.emit(Op.GATHER, [args[0], args[1]], {}, *_out(t, node))


@handles("aten.layer_norm.default")
def _layer_norm(t, node, args, kw):
    x, shape = args[0], args[1]
    w = args[2] if len(args) > 2 else None
    b = args[3] if len(args) > 3 else None
    eps = float(args[4]) if len(args) > 4 else 1e-5
    return t.emit(Op.LAYER_NORM, [x, w, b], {"eps": eps, "num_axes": len(shape)}, *_out(t, node))


@handles("aten.gelu.default")
def _gelu(t, node, args, kw):
    approximate = kw.get("approximate", args[1] if len(args) > 1 else "none")
    return t.emit(Op.GELU, [args[0]], {"approximate": approximate}, *_out(t, node))


@handles("aten.softmax.int", "aten._softmax.default")
def _softmax(t, node, args, kw):
    axis = int(args[1]) % _rank(t, args[0])
    return t.emit(Op.SOFTMAX, [args[0]], {"axis": axis}, *_out(t, node))


@handles("aten.matmul.default", "aten.bmm.default", "aten.mm.default")
def _matmul(t, node, args, kw):
    return t.emit(Op.MATMUL, [args[0], args[1]], {}, *_out(t, node))


_BINARY = {
    "aten.add.Tensor": Op.ADD,
    "aten.add.Scalar": Op.ADD,
    "aten.sub.Tensor": Op.SUB,
    "aten.sub.Scalar": Op.SUB,
    "aten.mul.Tensor": Op.MUL,
    "aten.mul.Scalar": Op.MUL,
    "aten.div.Tensor": Op.DIV,
    "aten.div.Scalar": Op.DIV,
    "aten.pow.Tensor_Scalar": Op.POW,
    "aten.pow.Tensor_Tensor": Op.POW,
    "aten.eq.Scalar": Op.EQUAL,
    "aten.eq.Tensor": Op.EQUAL,
    "aten.ne.Scalar": Op.NOT_EQUAL,
    "aten.ne.Tensor": Op.NOT_EQUAL,
}


def _binary(t: Translator, node: Any, op: Op, a: Any, b: Any) -> V:
    dtype, shape = _out(t, node)
    # Operands are brought to one dtype: the result's, or (comparisons) the promoted one.
    common = dtype
    if op in (Op.EQUAL, Op.NOT_EQUAL):
        kinds = [t.info(x).dtype for x in (a, b) if isinstance(x, V)]
        common = "float32" if "float32" in kinds or any(isinstance(x, float) for x in (a, b)) else kinds[0]
    return t.emit(op, [t.as_input(a, common), t.as_input(b, common)], {}, dtype, shape)


def _make_binary(op: Op) -> Handler:
    def handler(t, node, args, kw):
        alpha = kw.get("alpha", 1)
        b = args[1]
        if alpha != 1:
            b = (
                t.emit(Op.MUL, [b, np.asarray(alpha, np.float32)], {}, *_out(t, node))
                if isinstance(b, V)
                else b * alpha
            )
        return _binary(t, node, op, args[0], b)

    return handler


for _target, _op in _BINARY.items():
    HANDLERS[_target] = _make_binary(_op)


@handles("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(t, node, args, kw):
    return _binary(t, node, Op.SUB, args[1], args[0])


@handles("aten.div.Tensor_mode")
def _div_mode(t, node, args, kw):
    if kw.get("rounding_mode") is not None:
        raise CaptureError(f"integer division (rounding_mode) at {t.path} is not in the IR")
    return _binary(t, node, Op.DIV, args[0], args[1])


_UNARY = {
    "aten.tanh.default": Op.TANH,
    "aten.relu.default": Op.RELU,
    "aten.sqrt.default": Op.SQRT,
    "aten.rsqrt.default": Op.RSQRT,
    "aten.exp.default": Op.EXP,
    "aten.erf.default": Op.ERF,
    "aten.neg.default": Op.NEG,
}
for _target, _op in _UNARY.items():
    HANDLERS[_target] = (lambda op: lambda t, node, args, kw: t.emit(op, [args[0]], {}, *_out(t, node)))(_op)


@handles("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default")
def _reshape(t, node, args, kw):
    shape = [t.dim(d) for d in args[1]]
    return t.emit(Op.RESHAPE, [args[0]], {"shape": shape}, *_out(t, node))


@handles("aten.transpose.int")
def _transpose(t, node, args, kw):
    rank = _rank(t, args[0])
    perm = list(range(rank))
    a, b = int(args[1]) % rank, int(args[2]) % rank
    perm[a], perm[b] = perm[b], perm[a]
    return t.emit(Op.TRANSPOSE, [args[0]], {"perm": perm}, *_out(t, node))


@handles("aten.permute.default")
def _permute(t, node, args, kw):
    rank = _rank(t, args[0])
    return t.emit(Op.TRANSPOSE, [args[0]], {"perm": [int(p) % rank for p in args[1]]}, *_out(t, node))


@handles("aten.t.default")
def _t(t, node, args, kw):
    return t.emit(Op.TRANSPOSE, [args[0]], {"perm": [1, 0]}, *_out(t, node))


@handles("aten.slice.Tensor")
def _slice(t, node, args, kw):
    x = args[0]
    shape = t.info(x).shape
    axis = int(args[1] if len(args) > 1 else 0) % len(shape)
    start = args[2] if len(args) > 2 and args[2] is not None else 0
    end = args[3] if len(args) > 3 and args[3] is not None else None
    step = int(args[4]) if len(args) > 4 else 1
    start_dim, size = t.dim(start), shape[axis]
    end_dim = size if end is None else t.dim(end)
    if isinstance(end_dim, int) and isinstance(size, int):
        end_dim = min(end_dim, size)
    elif isinstance(end_dim, int) and end_dim >= 2**62:
        end_dim = size
    if start_dim == 0 and end_dim == size and step == 1:
        return x  # identity slice
    attrs = {"axis": axis, "start": start_dim, "end": end_dim, "step": step}
    return t.emit(Op.SLICE, [x], attrs, *_out(t, node))


@handles("aten.select.int")
def _select(t, node, args, kw):
    x, axis, index = args[0], int(args[1]), int(args[2])
    shape = list(t.info(x).shape)
    axis %= len(shape)
    if index < 0:
        if not isinstance(shape[axis], int):
            raise CaptureError(f"negative select on a symbolic dim at {t.path}")
        index += shape[axis]
    sliced = [*shape[:axis], 1, *shape[axis + 1 :]]
    part = t.emit(
        Op.SLICE,
        [x],
        {"axis": axis, "start": index, "end": index + 1, "step": 1},
        t.info(x).dtype,
        tuple(sliced),
    )
    return t.emit(Op.SQUEEZE, [part], {"axes": [axis]}, *_out(t, node))


@handles("aten.cat.default", "aten.concat.default")
def _cat(t, node, args, kw):
    tensors = list(args[0])
    axis = int(args[1] if len(args) > 1 else kw.get("dim", 0)) % _rank(t, tensors[0])
    return t.emit(Op.CONCAT, tensors, {"axis": axis}, *_out(t, node))


@handles("aten.expand.default")
def _expand(t, node, args, kw):
    x, size = args[0], [t.dim(d) for d in args[1]]
    rank = _rank(t, x)
    if len(size) > rank:
        lead = len(size) - rank
        x = t.emit(
            Op.UNSQUEEZE, [x], {"axes": list(range(lead))}, t.info(x).dtype, (1,) * lead + t.info(x).shape
        )
    return t.emit(Op.EXPAND, [x], {"shape": size}, *_out(t, node))


@handles("aten.unsqueeze.default")
def _unsqueeze(t, node, args, kw):
    axis = int(args[1]) % (_rank(t, args[0]) + 1)
    return t.emit(Op.UNSQUEEZE, [args[0]], {"axes": [axis]}, *_out(t, node))


@handles("aten.squeeze.dim", "aten.squeeze.dims")
def _squeeze(t, node, args, kw):
    rank = _rank(t, args[0])
    dims = args[1] if isinstance(args[1], list | tuple) else [args[1]]
    shape = t.info(args[0]).shape
    axes = sorted({int(d) % rank for d in dims if shape[int(d) % rank] == 1})
    if not axes:
        return args[0]
    return t.emit(Op.SQUEEZE, [args[0]], {"axes": axes}, *_out(t, node))


@handles("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf", "aten.where.Scalar")
def _where(t, node, args, kw):
    dtype, shape = _out(t, node)
    return t.emit(
        Op.WHERE,
        [t.as_input(args[0], "bool"), t.as_input(args[1], dtype), t.as_input(args[2], dtype)],
        {},
        dtype,
        shape,
    )


@handles(
    "aten.to.dtype",
    "aten.to.dtype_layout",
    "aten.to.device",
    "aten._to_copy.default",
    "aten.type_as.default",
    "aten.to.other",
)
def _to(t, node, args, kw):
    dtype, shape = _out(t, node)
    x = args[0]
    if t.info(x).dtype == dtype:
        return x
    return t.emit(Op.CAST, [x], {"to": dtype}, dtype, shape)


@handles("aten.mean.dim")
def _mean(t, node, args, kw):
    rank = _rank(t, args[0])
    axes = sorted(int(a) % rank for a in args[1])
    keep = bool(args[2] if len(args) > 2 else kw.get("keepdim", False))
    return t.emit(Op.REDUCE_MEAN, [args[0]], {"axes": axes, "keepdims": keep}, *_out(t, node))


@handles("aten.sum.dim_IntList")
def _sum(t, node, args, kw):
    rank = _rank(t, args[0])
    axes = sorted(int(a) % rank for a in args[1])
    keep = bool(args[2] if len(args) > 2 else kw.get("keepdim", False))
    dtype, shape = _out(t, node)
    return t.emit(Op.REDUCE_SUM, [t.as_input(args[0], dtype)], {"axes": axes, "keepdims": keep}, dtype, shape)


@handles("aten.cumsum.default")
def _cumsum(t, node, args, kw):
    dtype, shape = _out(t, node)
    axis = int(args[1]) % _rank(t, args[0])
    return t.emit(Op.CUMSUM, [t.as_input(args[0], dtype)], {"axis": axis}, dtype, shape)


@handles("aten.constant_pad_nd.default", "aten.pad.default")
def _pad(t, node, args, kw):
    x, flat = args[0], [int(p) for p in args[1]]
    mode = kw.get("mode", args[2] if len(args) > 2 and isinstance(args[2], str) else "constant")
    if mode != "constant":
        raise CaptureError(f"{mode} padding at {t.path} is not in the IR (constant padding only)")
    raw = kw.get("value", args[-1] if len(args) > 2 and not isinstance(args[-1], str) else 0.0)
    value = float(raw or 0.0)
    rank = _rank(t, x)
    pads = [[0, 0] for _ in range(rank)]
    for i in range(len(flat) // 2):  # torch lists the last dim first
        pads[rank - 1 - i] = [flat[2 * i], flat[2 * i + 1]]
    if any(p < 0 for pair in pads for p in pair):
        raise CaptureError(f"negative padding at {t.path} is not in the IR")
    return t.emit(Op.PAD, [x], {"pads": pads, "value": value}, *_out(t, node))


IDENTITY = {
    "aten.dropout.default",
    "aten.contiguous.default",
    "aten.clone.default",
    "aten.alias.default",
    "aten.detach.default",
    "aten.lift_fresh_copy.default",
    "aten.feature_dropout.default",
}
IGNORED = {
    "aten._assert_tensor_metadata.default",
    "aten._assert_scalar.default",
    "aten.sym_constrain_range_for_size.default",
    "aten._assert_async.msg",
}
