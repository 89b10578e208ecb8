"""Translate a torch.export program (aten ops) into the qexport IR.

The driver: it walks the program's nodes, folds every node whose inputs are all constants at
capture time (evaluated by torch, so shape bookkeeping never reaches the IR), hands the rest
to the aten handlers (``frontend/aten.py``), and names nodes after their torch module path
(see ``_assign_names``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from qexport.errors import CaptureError
from qexport.frontend import pt2e
from qexport.frontend.aten import IDENTITY, IGNORED
from qexport.frontend.translator import HANDLERS, Named, Sym, Translator, V, ir_dtype, name_const
from qexport.ir.graph import Graph, Node, ValueInfo
from qexport.ir.ops import Op


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
        if target in IGNORED:
            continue
        if target in IDENTITY:
            env[fx_node.name] = args[0]
            continue
        if target == "<built-in function getitem>":
            env[fx_node.name] = args[0][args[1]]
            continue
        if target in pt2e.QUANTIZE | pt2e.DEQUANTIZE | pt2e.DEQUANTIZE_CHANNEL:
            env[fx_node.name] = _quantization_op(t, fx_node, target, args, kwargs)
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


def _quantization_op(t: Translator, fx_node: Any, target: str, args: Any, kwargs: dict[str, Any]) -> Any:
    """pt2e's quantize/dequantize ops (frontend/pt2e.py): a quantize -> dequantize pair on a value
    is a spec on that value; a dequantized int8 constant is its float values, remembered as
    integers for a Linear weight. On constants alone they fold like any op."""
    source = args[0]
    where = f"{target} at {t.path or '<top level>'}"
    if target in pt2e.QUANTIZE:
        if isinstance(source, V):
            return pt2e.Quantized(source, pt2e.activation_spec(tuple(args), where))
        return _fold(fx_node, args, kwargs, t)
    if isinstance(source, pt2e.Quantized):
        spec = pt2e.activation_spec(tuple(args), where)
        known = t.specs.setdefault(source.value.id, source.spec)
        if not (pt2e.same_spec(spec, source.spec) and pt2e.same_spec(known, spec)):
            raise CaptureError(f"{where}: dequantized with other params than it was quantized with")
        return source.value
    if isinstance(source, V):
        raise CaptureError(f"{where}: dequantizes a computed tensor no quantize op produced")
    folded = _fold(fx_node, args, kwargs, t)
    if target in pt2e.DEQUANTIZE_CHANNEL and isinstance(source, Named):
        scale, zero = (np.asarray(_constant(t, a)) for a in args[1:3])
        held = pt2e.QuantizedConstant(
            t.constants[source.name], scale, zero, int(args[3]), int(args[4]), int(args[5])
        )
        name = f"{source.name}.dequantized"
        t.constants[name] = folded
        t.quantized_constants[name] = held
        return name_const(name)
    return folded


def _constant(t: Translator, ref: Any) -> Any:
    return t.constants[ref.name] if isinstance(ref, Named) else ref


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
        if isinstance(obj, Named):
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
    _quantization(t, graph, rename)
    graph.validate()
    return graph


def _quantization(t: Translator, graph: Graph, rename: dict[str, str]) -> None:
    """A pt2e program's specs on the named graph: each quantized value's, and each Linear
    weight's integers as stored (frontend/pt2e.py). A quantized graph input is left float: the
    artifacts take float inputs (noted in the metadata)."""
    dropped = []
    for vid, spec in t.specs.items():
        name = rename.get(vid, vid)
        if name in graph.inputs:
            dropped.append(name)
        else:
            graph.quant[name] = spec
    for node in graph.nodes:
        held = t.quantized_constants.get(node.inputs[1]) if node.op is Op.LINEAR else None
        if held is not None:
            graph.constants[node.inputs[1]] = held.integers
            graph.quant[node.inputs[1]] = pt2e.weight_spec(held, f"Linear {node.name}")
    if dropped:
        graph.metadata["notes"] = [
            f"pt2e quantize/dequantize of graph input {n} not kept: inputs stay float" for n in dropped
        ]
