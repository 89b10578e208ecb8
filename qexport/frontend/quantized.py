"""Models PyTorch already quantized, kept with their own integers (docs/capture.md).

``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)`` replaces each
Linear by a dynamically quantized one: int8 weights (per tensor, or per channel with a
per-channel qconfig) packed in ``<module>._packed_params._packed_params`` as ``(weight, bias)``,
and an input quantized at run time by PyTorch's rule (one range per tensor, uint8 values in
[0, 127] on x86: the IR's dynamic ``uint7`` spec, ``qexport.ir.arith.dynamic_params``).

``unpack_dynamic`` turns such a state_dict into float weights (the int8 values dequantized, so
the float model computes the same weights) plus the integers and params per Linear;
``apply_dynamic`` puts those integers back into the captured IR, exactly as stored, with the
run-time input spec. Anything else a quantization workflow leaves is refused by
``source.refuse_quantized_state``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qexport.errors import SourceError
from qexport.ir.graph import Graph, QDType, QuantSpec
from qexport.ir.ops import Op

PACKED = "._packed_params._packed_params"
RECIPE = "torch-dynamic"


@dataclass(frozen=True)
class QuantizedLinear:
    """One Linear's weight as PyTorch stored it."""

    integers: np.ndarray  # int8 [out, in]
    scale: np.ndarray  # float32, () or (out,)
    zero_point: np.ndarray  # int32, same shape
    axis: int | None  # 0: per output channel


@dataclass
class DynamicSource:
    """A ``quantize_dynamic`` state_dict's int8 weights by module path, and the state as stored."""

    linears: dict[str, QuantizedLinear]
    state: dict[str, Any] = field(repr=False)
    label: str = "torch.ao quantize_dynamic"

    def apply(self, graph: Graph) -> Graph:
        return apply_dynamic(graph, self.linears)

    def reference(self, float_module: Any) -> Any:
        return torch_quantized_module(float_module, self.linears, self.state)

    def requantization_note(
        self, graph: Graph, quantized: Graph, seq_len: int, tokenizer_dir: Path | None
    ) -> str | None:
        return None  # kept exactly or refused (asymmetric weights, static convert)

    def note(self) -> str:
        return (
            f"torch.ao quantize_dynamic source: {len(self.linears)} Linears keep their int8 weights and "
            f"PyTorch's run-time input rule (recipe {RECIPE})"
        )


def is_dynamic_state(state: dict[str, Any]) -> bool:
    return any(key.endswith(PACKED) for key in state)


def unpack_dynamic(state: dict[str, Any], where: Path) -> tuple[dict[str, Any], dict[str, QuantizedLinear]]:
    """(float state_dict, the int8 weights by module path) of a ``quantize_dynamic`` state_dict."""
    import torch

    floats: dict[str, Any] = {}
    linears: dict[str, QuantizedLinear] = {}
    for key, value in state.items():
        if not key.endswith(PACKED):
            continue
        module = key.removesuffix(PACKED)
        dtype = state.get(f"{module}._packed_params.dtype")
        weight, bias = value if isinstance(value, tuple) and len(value) == 2 else (None, None)
        if dtype is not torch.qint8 or not isinstance(weight, torch.Tensor) or not weight.is_quantized:
            raise SourceError(
                f"{where}: {module!r} is a packed Linear qexport cannot read ({dtype}); only "
                "quantize_dynamic with dtype=torch.qint8 is supported"
            )
        if float(state.get(f"{module}.scale", 1.0)) != 1.0 or int(state.get(f"{module}.zero_point", 0)) != 0:
            raise SourceError(
                f"{where}: {module!r} has output params: a statically quantized (convert) model, "
                "which qexport does not read yet; pass the float model's state_dict"
            )
        linears[module] = _unpacked(weight, module, where)
        floats[f"{module}.weight"] = weight.dequantize()
        if bias is not None:
            floats[f"{module}.bias"] = bias.detach()
    packed = {k.removesuffix(PACKED) for k in linears}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        owner = module.removesuffix("._packed_params")
        if owner in packed and leaf in ("scale", "zero_point", "dtype", "_packed_params"):
            continue  # the packed Linear's bookkeeping, read above
        floats[key] = value
    return floats, linears


def _unpacked(weight: Any, module: str, where: Path) -> QuantizedLinear:
    import torch

    integers = weight.int_repr().numpy().astype(np.int8)
    if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        scale = np.array(weight.q_scale(), np.float32)
        zero = np.array(weight.q_zero_point(), np.int32)
        axis = None
    else:
        scale = weight.q_per_channel_scales().numpy().astype(np.float32)
        zero = weight.q_per_channel_zero_points().numpy().astype(np.int32)
        axis = int(weight.q_per_channel_axis())
    if axis not in (None, 0):
        raise SourceError(
            f"{where}: {module!r} is quantized along axis {axis}; Linear weights are per output channel"
        )
    if np.any(zero != 0):
        raise SourceError(
            f"{where}: {module!r} has asymmetric int8 weights (zero point {int(np.ravel(zero)[0])}); "
            "the integer kernels qexport writes take symmetric ones"
        )
    return QuantizedLinear(integers, scale, zero, axis)


def apply_dynamic(graph: Graph, linears: dict[str, QuantizedLinear]) -> Graph:
    """The captured float ``graph`` quantized as PyTorch did: recipe ``torch-dynamic`` (each
    Linear input group read through its own value carrying the run-time uint7 spec, as PyTorch
    quantizes inside the Linear), then each Linear's integers and params exactly as stored."""
    from qexport.quant.engine import quantize_graph
    from qexport.quant.recipe import BUILTIN

    out = quantize_graph(graph, BUILTIN[RECIPE], None)
    out.metadata["recipe"]["source"] = "torch.ao quantize_dynamic"
    found = set()
    for node in out.nodes:
        held = linears.get(node.name)
        if node.op is not Op.LINEAR or held is None:
            continue
        w = node.inputs[1]
        if out.constants[w].shape != held.integers.shape:
            raise SourceError(
                f"Linear {node.name!r}: weight shape {out.constants[w].shape} != {held.integers.shape}"
            )
        out.constants[w] = held.integers
        out.quant[w] = QuantSpec(QDType.INT8, held.scale, held.zero_point, axis=held.axis)
        found.add(node.name)
    lost = sorted(set(linears) - found)
    if lost:
        raise SourceError(f"quantized Linear {lost[0]!r} has no Linear node in the captured graph")
    unquantized = [
        n.name for n in out.nodes if n.op is Op.LINEAR and n.name not in found and n.inputs[1] in out.quant
    ]
    if unquantized:  # PyTorch left these float (a qconfig_spec without them): so does the IR
        raise SourceError(
            f"Linear {unquantized[0]!r} is float in the source but quantize_dynamic quantized the others; "
            "partially quantized sources are not supported yet"
        )
    out.validate()
    return out


def torch_quantized_module(
    float_module: Any, linears: dict[str, QuantizedLinear], state: dict[str, Any]
) -> Any:
    """The source model as PyTorch runs it (``quantize_dynamic`` of its float twin, then the
    stored packed weights): the parity checker's reference for what the user quantized."""
    import copy

    import torch
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    spec = dict.fromkeys(linears, default_dynamic_qconfig)
    model = quantize_dynamic(copy.deepcopy(float_module), spec, dtype=torch.qint8)
    model.load_state_dict(state, strict=False)
    return model.eval()
