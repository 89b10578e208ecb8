"""Translate a torch.export program (aten ops) into the qexport IR.

One small function per aten op family in ``HANDLERS``. Nodes whose inputs are all constants
are folded at capture time (evaluated by torch), so shape bookkeeping never reaches the IR.
Node names come from the torch module path (see ``_assign_names``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qexport.errors import CaptureError
from qexport.ir.graph import Graph, Node, ValueInfo
from qexport.ir.ops import Op
from qexport.ir.symbols import Dim, evaluate

_TORCH_DTYPES = {
    "torch.float32": "float32",
    "torch.int64": "int64",
    "torch.int32": "int32",
    "torch.int16": "int16",
    "torch.int8": "int8",
    "torch.uint8": "uint8",
    "torch.bool": "bool",
}


@dataclass(frozen=True)
class V:
    """Reference to an IR value (by temporary id until names are assigned)."""

    id: str


@dataclass(frozen=True)
class Sym:
    """A symbolic integer (e.g. the sequence length) as an IR expression string."""

    expr: str


@dataclass
class _Pending:
    op: Op
    inputs: list[str]
    output: str
    attrs: dict[str, Any]
    path: str
    info: ValueInfo


@dataclass
class Translator:
    """Mutable state of one translation."""

    symbols: dict[str, str]  # torch symbol name -> IR dim name
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    pending: list[_Pending] = field(default_factory=list)
    values: dict[str, ValueInfo] = field(default_factory=dict)
    path: str = ""
    counter: int = 0

    # -- value helpers -------------------------------------------------
    def info(self, ref: Any) -> ValueInfo:
        if isinstance(ref, V):
            return self.values[ref.id]
        if isinstance(ref, _Named):
            array = self.constants[ref.name]
            return ValueInfo(str(array.dtype), tuple(array.shape))
        array = np.asarray(ref)
        return ValueInfo(str(array.dtype), tuple(array.shape))

    def as_input(self, ref: Any, dtype: str | None = None) -> str:
        """IR name for ``ref``: values pass through, tensors/scalars become constants."""
        if isinstance(ref, str):
            return ref  # already an IR name
        if isinstance(ref, V):
            if dtype is not None and self.values[ref.id].dtype != dtype:
                return self.emit(Op.CAST, [ref], {"to": dtype}, dtype, self.values[ref.id].shape).id
            return ref.id
        if isinstance(ref, _Named):
            if dtype is not None and str(self.constants[ref.name].dtype) != dtype:
                ref = self.constants[ref.name]  # folded cast: becomes a new literal below
            else:
                return ref.name
        if isinstance(ref, Sym):
            raise CaptureError(f"symbolic value {ref.expr} used as a tensor in {self.path or 'the model'}")
        array = np.asarray(ref)
        if dtype is not None:
            array = array.astype(dtype)
        elif array.dtype == np.float64:
            array = array.astype(np.float32)
        self.counter += 1
        name = f"%const{self.counter}"
        self.constants[name] = np.asarray(array, order="C")
        return name

    def emit(self, op: Op, inputs: list[Any], attrs: dict[str, Any], dtype: str, shape: tuple[Dim, ...]) -> V:
        names = [self.as_input(i) if i is not None else "" for i in inputs]
        self.counter += 1
        vid = f"%v{self.counter}"
        info = ValueInfo(dtype, tuple(shape))
        self.values[vid] = info
        self.pending.append(_Pending(op, names, vid, attrs, self.path, info))
        return V(vid)

    def dim(self, value: Any) -> Dim:
        """An int or a symbolic expression string for a torch SymInt / our Sym."""
        if isinstance(value, Sym):
            return value.expr
        if isinstance(value, int):
            return value
        return self.sym_expr(value)

    def sym_expr(self, symint: Any) -> Dim:
        node = getattr(symint, "node", None)
        if node is None:
            return int(symint)
        expr = node.expr
        if getattr(expr, "is_number", False):
            return int(expr)
        import sympy

        mapping = {s: sympy.Symbol(self.symbols.get(str(s), str(s))) for s in expr.free_symbols}
        text = str(expr.xreplace(mapping)).replace(" ", "")
        try:
            evaluate(text, {s: 7 for s in self.symbols.values()})
        except Exception:
            raise CaptureError(f"symbolic shape {text!r} is outside what the IR expresses") from None
        return text

    def shape_of(self, fx_node: Any) -> tuple[Dim, ...]:
        return tuple(self.dim(d) for d in fx_node.meta["val"].shape)


Handler = Callable[[Translator, Any, list[Any], dict[str, Any]], Any]
HANDLERS: dict[str, Handler] = {}


def handles(*targets: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for target in targets:
            HANDLERS[target] = fn
        return fn

    return register


def ir_dtype(torch_dtype: Any, where: str) -> str:
    name = str(torch_dtype)
    if name not in _TORCH_DTYPES:
        raise CaptureError(f"dtype {name} at {where} is not supported; convert the model to float32")
    return _TORCH_DTYPES[name]


def _out(t: Translator, node: Any) -> tuple[str, tuple[Dim, ...]]:
    return ir_dtype(node.meta["val"].dtype, node.name), t.shape_of(node)


def _rank(t: Translator, ref: Any) -> int:
    return len(t.info(ref).shape)


# ---------------------------------------------------------------- handlers


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


_IDENTITY = {
    "aten.dropout.default",
    "aten.contiguous.default",
    "aten.clone.default",
    "aten.alias.default",
    "aten.detach.default",
    "aten.lift_fresh_copy.default",
    "aten.feature_dropout.default",
}
_IGNORED = {
    "aten._assert_tensor_metadata.default",
    "aten._assert_scalar.default",
    "aten.sym_constrain_range_for_size.default",
    "aten._assert_async.msg",
}


# ---------------------------------------------------------------- driver


def translate(
    program: Any, input_names: list[str], output_names: list[str], *, prefix: str = "model."
) -> Graph:
    """Turn an ExportedProgram into an IR Graph (float, no quant specs)."""
    import torch

    sig = program.graph_signature
    state = dict(program.state_dict)
    state.update(getattr(program, "constants", {}) or {})
    user_inputs = [s for s in sig.input_specs if s.kind.name == "USER_INPUT"]
    symbols = _symbol_names(program, [s.arg.name for s in user_inputs])
    t = Translator(symbols)
    env: dict[str, Any] = {}
    graph_inputs: dict[str, ValueInfo] = {}
    placeholder_nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for spec, public in zip(user_inputs, input_names, strict=True):
        fx_node = placeholder_nodes[spec.arg.name]
        info = ValueInfo(ir_dtype(fx_node.meta["val"].dtype, public), t.shape_of(fx_node))
        graph_inputs[public] = info
        t.values[public] = info
        env[spec.arg.name] = V(public)
    for spec in sig.input_specs:
        if spec.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            tensor = state[spec.target].detach()
            name = spec.target.removeprefix(prefix)
            # A view, not a copy: the IR's float weights share memory with the module's
            # parameters (nothing in qexport writes to a constant in place), which keeps a
            # BERT-large conversion within 3x its weight bytes (docs/capture.md).
            array = tensor.numpy() if tensor.dtype != torch.bfloat16 else None
            if array is None or str(array.dtype) not in {
                "float32",
                "int64",
                "int32",
                "bool",
                "int8",
                "uint8",
                "int16",
            }:
                raise CaptureError(f"parameter {name} has dtype {tensor.dtype}; convert the model to float32")
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                bad = int(array.size - np.count_nonzero(np.isfinite(array)))
                raise CaptureError(
                    f"parameter {name} holds {bad} NaN/Inf values; fix the checkpoint before converting"
                )
            t.constants[name] = array
            env[spec.arg.name] = name_const(name)
        elif spec.kind.name != "USER_INPUT":
            raise CaptureError(f"unsupported program input kind {spec.kind.name} ({spec.arg.name})")

    for fx_node in program.graph.nodes:
        if fx_node.op != "call_function":
            continue
        target = str(fx_node.target)
        t.path = _module_path(fx_node, prefix)
        args = _map_args(fx_node.args, env, t)
        kwargs = {k: v for k, v in _map_args(fx_node.kwargs, env, t).items()}
        if target in _IGNORED:
            continue
        if target in _IDENTITY:
            env[fx_node.name] = args[0]
            continue
        if target == "<built-in function getitem>":
            env[fx_node.name] = args[0][args[1]]
            continue
        if target == "aten.sym_size.int":
            env[fx_node.name] = Sym(str(t.dim(fx_node.meta["val"])))
            continue
        if _foldable(args, kwargs):
            env[fx_node.name] = _fold(fx_node, args, kwargs, t)
            continue
        handler = HANDLERS.get(target)
        if handler is None:
            raise CaptureError(
                f"op {target} (from module {t.path or '<top level>'}) is outside the IR's op set; "
                "supported aten ops: " + ", ".join(sorted({h.split(".")[1] for h in HANDLERS}))
            )
        env[fx_node.name] = handler(t, fx_node, args, kwargs)

    output_node = next(n for n in program.graph.nodes if n.op == "output")
    results = list(output_node.args[0])
    if len(results) != len(output_names):
        raise CaptureError(f"program returns {len(results)} outputs, expected {len(output_names)}")
    outputs: dict[str, str] = {}
    for name, fx_out in zip(output_names, results, strict=True):
        ref = env[fx_out.name]
        if not isinstance(ref, V) or ref.id in graph_inputs:
            raise CaptureError(f"output {name} does not depend on the inputs; nothing to convert")
        outputs[name] = ref.id
    return _assign_names(t, graph_inputs, outputs)


def name_const(name: str) -> Any:
    """Marker so parameters keep their state_dict names as IR constant names."""
    return _Named(name)


@dataclass(frozen=True)
class _Named:
    name: str


def _map_args(obj: Any, env: dict[str, Any], t: Translator) -> Any:
    import torch.fx

    if isinstance(obj, torch.fx.Node):
        ref = env[obj.name]
        return ref
    if isinstance(obj, list | tuple):
        return type(obj)(_map_args(o, env, t) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_args(v, env, t) for k, v in obj.items()}
    return obj


def _is_dynamic(obj: Any) -> bool:
    if isinstance(obj, V | Sym):
        return True
    if isinstance(obj, list | tuple):
        return any(_is_dynamic(o) for o in obj)
    return False


def _foldable(args: Any, kwargs: dict[str, Any]) -> bool:
    return not _is_dynamic(list(args)) and not _is_dynamic(list(kwargs.values()))


def _fold(fx_node: Any, args: Any, kwargs: dict[str, Any], t: Translator) -> Any:
    """Evaluate an op whose inputs are all constants, at capture time."""
    import torch

    def to_torch(obj: Any) -> Any:
        if isinstance(obj, _Named):
            return torch.from_numpy(t.constants[obj.name].copy())
        if isinstance(obj, np.ndarray):
            return torch.from_numpy(obj.copy())
        if isinstance(obj, list | tuple):
            return type(obj)(to_torch(o) for o in obj)
        return obj

    with torch.no_grad():
        result = fx_node.target(*to_torch(list(args)), **{k: to_torch(v) for k, v in kwargs.items()})
    if isinstance(result, torch.Tensor):
        return result.detach().numpy().copy()
    return result


def _module_path(fx_node: Any, prefix: str) -> str:
    stack = fx_node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = str(path).removeprefix("L['self'].").removeprefix(prefix.rstrip(".")).lstrip(".")
    return path


def _symbol_names(program: Any, user_input_args: list[str]) -> dict[str, str]:
    """Name torch's shape symbols after their role: dim 0 of the inputs is batch, dim 1 seq."""
    names: dict[str, str] = {}
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for arg in user_input_args:
        val = placeholders[arg].meta.get("val")
        for index, dim in enumerate(getattr(val, "shape", ())):
            node = getattr(dim, "node", None)
            if node is not None and not getattr(node.expr, "is_number", True):
                role = {0: "batch", 1: "seq"}.get(index, f"dim{index}")
                names.setdefault(str(node.expr), role)
    return names


def _assign_names(t: Translator, inputs: dict[str, ValueInfo], outputs: dict[str, str]) -> Graph:
    """Stable names: the module path when a module yields one node, else path.op[_k]."""
    per_path = Counter(p.path for p in t.pending)
    seen: Counter[tuple[str, str]] = Counter()
    rename: dict[str, str] = {name: name for name in inputs}
    used: set[str] = set(inputs)
    for p in t.pending:
        kind = p.op.value.lower()
        if p.path and per_path[p.path] == 1:
            base = p.path
        else:
            base = f"{p.path}.{kind}" if p.path else kind
            k = seen[(p.path, kind)]
            seen[(p.path, kind)] += 1
            base = base if k == 0 else f"{base}_{k}"
        name = base
        while name in used or name in t.constants:
            name += "_"
        used.add(name)
        rename[p.output] = name
    # constants: parameters keep state_dict names; literals are named after their consumer
    const_names: dict[str, str] = {}
    for p in t.pending:
        for i, inp in enumerate(p.inputs):
            if inp.startswith("%const") and inp not in const_names:
                cname = f"{rename[p.output]}.c{i}"
                while cname in used:
                    cname += "_"
                used.add(cname)
                const_names[inp] = cname
    constants: dict[str, np.ndarray] = {}
    nodes: list[Node] = []
    values: dict[str, ValueInfo] = {}
    referenced: set[str] = set()
    for p in t.pending:
        node_inputs = []
        for inp in p.inputs:
            new = const_names.get(inp) or rename.get(inp) or inp
            if inp in t.constants:
                constants.setdefault(new, t.constants[inp])
            node_inputs.append(new)
            referenced.add(new)
        out = rename[p.output]
        values[out] = p.info
        nodes.append(Node(out, p.op, node_inputs, [out], p.attrs))
    graph = Graph(inputs, {k: rename[v] for k, v in outputs.items()}, nodes, constants, values)
    graph.validate()
    return graph
