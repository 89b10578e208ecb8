"""The state of one torch.export -> IR translation, and the registry of aten op handlers.

``Translator`` collects emitted IR nodes under temporary ids (``V``), constants and symbolic
dims; ``frontend/aten.py`` registers one handler per aten op family in ``HANDLERS``;
``frontend/translate.py`` walks the program and calls them, then names everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qexport.errors import CaptureError
from qexport.ir.graph import ValueInfo
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


def name_const(name: str) -> Any:
    """Marker so parameters keep their state_dict names as IR constant names."""
    return Named(name)


@dataclass(frozen=True)
class Named:
    name: str


@dataclass
class Translator:
    """Mutable state of one translation."""

    symbols: dict[str, str]  # torch symbol name -> IR dim name
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    pending: list[_Pending] = field(default_factory=list)
    values: dict[str, ValueInfo] = field(default_factory=dict)
    path: str = ""
    counter: int = 0
    # pt2e programs (frontend/pt2e.py): specs of quantized values by V id, and the int8
    # constants dequantize_per_channel reads, by constant name
    specs: dict[str, Any] = field(default_factory=dict)
    quantized_constants: dict[str, Any] = field(default_factory=dict)

    # -- value helpers -------------------------------------------------
    def info(self, ref: Any) -> ValueInfo:
        if isinstance(ref, V):
            return self.values[ref.id]
        if isinstance(ref, Named):
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
        if isinstance(ref, Named):
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
