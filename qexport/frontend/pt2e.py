"""PyTorch 2 export quantization (pt2e) programs, kept with their own params (docs/capture.md).

``prepare_pt2e`` + calibration + ``convert_pt2e`` leaves a program whose float ops are wrapped
in ``quantized_decomposed`` ops: ``quantize_per_tensor`` -> ``dequantize_per_tensor`` pairs on
activations, and ``dequantize_per_channel`` of int8 constants for weights. Saved with
``torch.export.save``, it is a ``.pt2`` like any other, translated as it is
(``frontend/translate.py``), and the translation reads these ops instead of folding them:

- a quantize/dequantize pair on a value becomes a static ``QuantSpec`` on that value
  (``Quantized`` marks the quantized tensor between the two ops);
- a dequantized int8 constant read by a Linear becomes its weight integers and params, as
  stored (other dequantized constants are folded to the float values they hold, exactly).

``finish`` then turns the translated graph into the quantized IR (recipe ``torch-pt2e``) and
``float_graph`` into its float twin. The check compares the artifacts with the program itself
(``torch_quantized``) and with ``float_twin``, the program without its activation
quantize/dequantize pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qexport.errors import CaptureError, SourceError
from qexport.ir.graph import Graph, QDType, QuantSpec, copy_graph
from qexport.ir.ops import Op

RECIPE = "torch-pt2e"
QUANTIZE = frozenset({"quantized_decomposed.quantize_per_tensor.default"})
DEQUANTIZE = frozenset({"quantized_decomposed.dequantize_per_tensor.default"})
DEQUANTIZE_CHANNEL = frozenset({"quantized_decomposed.dequantize_per_channel.default"})
_DTYPES = {("torch.int8", -128, 127): QDType.INT8, ("torch.uint8", 0, 255): QDType.UINT8}


@dataclass(frozen=True)
class Quantized:
    """The integer tensor between a quantize op and its dequantize ops."""

    value: Any  # the V that was quantized
    spec: QuantSpec


@dataclass(frozen=True)
class QuantizedConstant:
    """An int8 constant a dequantize_per_channel reads, as stored."""

    integers: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int
    qmin: int
    qmax: int


def activation_spec(args: tuple[Any, ...], where: str) -> QuantSpec:
    """The spec of ``quantize_per_tensor(x, scale, zero_point, qmin, qmax, dtype)``."""
    scale, zero, qmin, qmax, dtype = args[1:6]
    key = (str(dtype), int(qmin), int(qmax))
    if key not in _DTYPES:
        raise CaptureError(
            f"{where}: a pt2e quantize to {key[0]} [{key[1]}, {key[2]}], which qexport does not read "
            "(int8 [-128, 127] or uint8 [0, 255])"
        )
    return QuantSpec(_DTYPES[key], np.array(np.float32(scale)), np.array(int(zero), np.int32))


def weight_spec(held: QuantizedConstant, where: str) -> QuantSpec:
    """The IR spec of a Linear weight pt2e stored, or one line saying why it cannot be read."""
    if held.axis != 0 or np.any(held.zero_point != 0) or held.qmin < -128 or held.qmax > 127:
        raise CaptureError(
            f"{where}: a pt2e weight quantized along axis {held.axis}, range [{held.qmin}, {held.qmax}], "
            "with nonzero zero points or not; qexport reads symmetric per-output-channel int8"
        )
    channels = held.integers.shape[0]
    return QuantSpec(QDType.INT8, held.scale.astype(np.float32), np.zeros(channels, np.int32), axis=0)


def same_spec(a: QuantSpec, b: QuantSpec) -> bool:
    return (
        a.dtype is b.dtype
        and a.scale.tobytes() == b.scale.tobytes()
        and np.array_equal(a.zero_point, b.zero_point)
    )


@dataclass
class Pt2eSource:
    """A pt2e program: the torch reference of the check (the program itself) and its float twin."""

    program: Any = field(repr=False)
    label: str = "torch.ao pt2e (convert_pt2e)"
    strict: bool = False

    def reference(self, _module: Any) -> Any:
        return self.program.module()

    def float_module(self) -> Any:
        return float_twin(self.program)

    def note(self, graph: Graph) -> str:
        weights = sum(1 for n in graph.nodes if n.op is Op.LINEAR and n.inputs[1] in graph.quant)
        values = sum(1 for v in graph.quant if v not in graph.constants)
        return (
            f"torch.ao pt2e source: {weights} Linear weights and {values} quantized values keep the "
            f"program's params (recipe {RECIPE})"
        )


def finish(graph: Graph, source: Pt2eSource) -> Graph:
    """The translated ``graph`` (the program's specs and weight integers) as an IR every backend
    lowers: weights at -128 set to -127, an int32 bias where a Linear's input is quantized."""
    from qexport.quant.engine import integer_bias
    from qexport.quant.recipe import BUILTIN, to_dict

    out = copy_graph(graph)
    out.metadata["recipe"] = {**to_dict(BUILTIN["fp32"]), "name": RECIPE, "source": source.label}
    clamped = []
    for node in out.nodes:
        if node.op is not Op.LINEAR or node.inputs[1] not in out.quant:
            continue
        w = node.inputs[1]
        integers = out.constants[w]
        if (integers == -128).any():
            if source.strict:
                raise SourceError(
                    f"Linear {node.name!r} holds an int8 weight at -128, which TFLite's symmetric range "
                    "excludes; drop --strict-params to set it to -127 (cost in the manifest's notes)"
                )
            clamped.append(node.name)
            integers = np.maximum(integers, -127).astype(np.int8)
        out.constants[w] = integers
        x_spec = out.quant.get(node.inputs[0])
        if len(node.inputs) > 2 and node.inputs[2] and x_spec is not None:
            bias = node.inputs[2]
            out.constants[bias], out.quant[bias] = integer_bias(out.constants[bias], x_spec, out.quant[w])
    if clamped:
        out.metadata["notes"] = [
            *out.metadata.get("notes", []),
            f"re-quantized for the backends: {len(clamped)} pt2e weights at -128 set to -127",
        ]
    out.validate()
    return out


def requantization_cost(quantized: Graph, exact: Graph, seq_len: int) -> str | None:
    """What ``finish`` changed (weights at -128, int32 biases), measured: the reference run of
    both IRs on 8 random token sequences, SQNR per output."""
    from qexport.parity.bisect import sqnr_db
    from qexport.quant.calibration import random_tokens
    from qexport.reference.executor import run

    clamped = [n for n in quantized.metadata["notes"] if "set to -127" in n]
    if not clamped:
        return None
    first = next(iter(quantized.inputs.values())).shape
    seq = first[1] if len(first) > 1 and isinstance(first[1], int) else seq_len
    inputs = random_tokens(quantized, seq, samples=8)
    ours, ref = ({k: [] for k in quantized.outputs} for _ in range(2))
    for i in range(8):  # one sample at a time: a program may have a static batch of 1
        one = {k: v[i : i + 1] for k, v in inputs.items()}
        for store, graph in ((ours, quantized), (ref, exact)):
            for k, v in run(graph, one).items():
                if k in store:
                    store[k].append(v)
    cost = ", ".join(
        f"{k} {sqnr_db(np.concatenate(ours[k]), np.concatenate(ref[k]), None):.1f} dB"
        for k in quantized.outputs
    )
    return f"measured against the program's exact params (int32 biases included) on 8 random token sequences: {cost}"


def float_graph(graph: Graph) -> Graph:
    """The translated graph without specs: what the program computes with its activation
    quantize/dequantize pairs removed (weights dequantized as stored, in float32)."""
    from qexport.ir.arith import dequantize

    out = copy_graph(graph)
    for name in list(out.quant):
        if name in out.constants:
            out.constants[name] = dequantize(out.constants[name], out.quant[name]).astype(np.float32)
    out.quant = {}
    return out


def float_twin(program: Any) -> Any:
    """``program.module()`` with every activation quantize -> dequantize pair bypassed."""
    module = program.module()
    graph = module.graph
    for node in list(graph.nodes):
        source = node.args[0] if node.op == "call_function" and node.args else None
        if (
            str(node.target) in DEQUANTIZE
            and getattr(source, "op", "") == "call_function"
            and str(source.target) in QUANTIZE
        ):
            node.replace_all_uses_with(source.args[0])
            graph.erase_node(node)
    for node in list(graph.nodes):
        if node.op == "call_function" and str(node.target) in QUANTIZE and not node.users:
            graph.erase_node(node)
    graph.lint()
    module.recompile()
    return module
