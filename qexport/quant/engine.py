"""Apply a recipe to a float IR graph: calibrate, smooth, and store integer weights and specs.

Which tensors are quantized (see docs/quantization.md):
- every Linear weight: per-output-channel symmetric int8 (integers stored in the IR);
- the input of every Linear group (Linears reading the same tensor, e.g. Q/K/V): a per-channel
  smoothing Mul is inserted (SmoothQuant: x/s, W·s) and its output carries the activation spec;
- biases of statically quantized Linears: int32 with scale = s_in · s_w;
- embedding tables: int8 per row;
- everything else stays float (LayerNorm, Softmax, GELU, residual adds, attention matmuls).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qexport.errors import QExportError
from qexport.ir import gelu_rational
from qexport.ir.exact_ops import exact_ops
from qexport.ir.graph import Graph, Node, QDType, QuantSpec, ValueInfo, copy_graph
from qexport.ir.ops import Op
from qexport.quant.calibration import CalibrationSet, collect_samples, observe_channels
from qexport.quant.full_integer import Precisions, quantize_full_integer
from qexport.quant.ranges import (
    activation_spec,
    grouped_activation_spec,
    mse_range,
    percentile_range,
    weight_spec,
)
from qexport.quant.recipe import Recipe, to_dict

Progress = Callable[[int, int], None]
SMOOTH_CLAMP = (1e-4, 1e4)


@dataclass
class LinearGroup:
    """Linear nodes that read the same input tensor."""

    input: str
    linears: list[Node]

    @property
    def name(self) -> str:
        return f"{self.linears[0].name}.input"


def linear_groups(graph: Graph, recipe: Recipe) -> list[LinearGroup]:
    groups: dict[str, LinearGroup] = {}
    for node in graph.nodes:
        if node.op is Op.LINEAR and node.inputs[1] in graph.constants and not recipe.keeps_float(node.name):
            groups.setdefault(node.inputs[0], LinearGroup(node.inputs[0], [])).linears.append(node)
    return list(groups.values())


def smoothing_scales(
    stats_lo: np.ndarray, stats_hi: np.ndarray, weights: list[np.ndarray], alpha: float
) -> np.ndarray:
    """s_j = max|x_j|^α / max|W_:,j|^(1-α): moves activation outliers into the weights."""
    act = np.maximum(np.abs(stats_lo), np.abs(stats_hi)).astype(np.float64)
    wmax = np.max(np.stack([np.max(np.abs(w), axis=0) for w in weights]), axis=0).astype(np.float64)
    act = np.where(np.isfinite(act) & (act > 0), act, 1.0)
    wmax = np.where(wmax > 0, wmax, 1.0)
    s = np.power(act, alpha) / np.power(wmax, 1.0 - alpha)
    return np.clip(s, *SMOOTH_CLAMP).astype(np.float32)


def quantize_graph(
    graph: Graph, recipe: Recipe, calib: CalibrationSet | None, progress: Progress | None = None
) -> Graph:
    """A new graph with ``recipe`` applied; ``graph`` is not modified."""
    out = copy_graph(graph)
    out.metadata["recipe"] = to_dict(recipe)
    if recipe.scheme == "none":
        return out
    if recipe.scheme == "integer":
        if calib is None:
            raise QExportError(f"recipe {recipe.name!r} quantizes activations and needs calibration data")
        _record_calibration(out, calib)
        precisions = Precisions(QDType(recipe.activation_dtype), frozenset(recipe.int8_roles))
        return quantize_full_integer(out, precisions, calib, progress, auto_int8_db=recipe.auto_int8_db)
    groups = linear_groups(out, recipe)
    stats = {}
    if recipe.needs_calibration:
        if calib is None:
            raise QExportError(f"recipe {recipe.name!r} quantizes activations and needs calibration data")
        stats = observe_channels(out, calib, [g.input for g in groups], on_batch=progress)
        _record_calibration(out, calib)
    producers_index = {n.name: i for i, n in enumerate(out.nodes)}
    inserts: list[tuple[int, Node]] = []
    act_values: dict[str, tuple[LinearGroup, np.ndarray]] = {}
    for group in groups:
        weights = [out.constants[n.inputs[1]] for n in group.linears]
        scale = np.ones(weights[0].shape[1], np.float32)
        if recipe.quantizes_activations:
            if recipe.smooth_alpha is not None:
                st = stats[group.input]
                scale = smoothing_scales(st.lo, st.hi, weights, recipe.smooth_alpha)
            # x / s feeds the Linears; W·s keeps the product exact in real arithmetic.
            mul_name = group.name
            const_name = f"{mul_name}.inv_smooth"
            out.constants[const_name] = (np.float32(1.0) / scale).astype(np.float32)
            info = out.values.get(group.input) or out.inputs[group.input]
            out.values[mul_name] = ValueInfo(info.dtype, info.shape)
            position = min(producers_index[n.name] for n in group.linears)
            inserts.append((position, Node(mul_name, Op.MUL, [group.input, const_name], [mul_name])))
            for node in group.linears:
                node.inputs[0] = mul_name
            act_values[mul_name] = (group, scale)
        for node in group.linears:
            w = out.constants[node.inputs[1]] * scale[None, :]
            q, spec = weight_spec(w, QDType(recipe.weight_dtype))
            out.constants[node.inputs[1]] = q
            out.quant[node.inputs[1]] = spec
    for position, node in sorted(inserts, key=lambda item: -item[0]):
        out.nodes.insert(position, node)

    if recipe.scheme == "static":
        # Sensitivity: what each activation group costs alone; the ``sensitive_int16`` worst
        # groups get int16 activations.
        # The table costs one model run per group (96 for BERT-large): only when it decides something.
        wide = 0 if recipe.activation_dtype == "int16" else recipe.sensitive_int16
        _static_activation_specs(out, recipe, calib, stats, act_values, quantize_bias=False)
        table = sensitivity(graph, out, calib, list(act_values)) if calib is not None and wide else []
        chosen = frozenset(name for name, _ in sorted(table, key=lambda row: row[1])[:wide])
        _static_activation_specs(out, recipe, calib, stats, act_values, chosen)
        if table:
            out.metadata["sensitivity"] = [
                {"input": n, "sqnr_db": round(v, 2), "int16": n in chosen} for n, v in table
            ]
        if recipe.quantize_op_inputs and calib is not None:
            _op_input_specs(out, recipe, calib)
        if recipe.linear_outputs == "int8" and calib is not None:
            _linear_output_specs(out, recipe, calib)
        if recipe.activation_dtype != "int16":
            for gelu in gelus_to_rewrite(out, recipe.exact_floats):
                gelu_rational.rewrite(out, gelu)
        if recipe.exact_floats:
            out.metadata["exact_floats"] = True  # read by the backends (qexport.ir.exact_ops)
    elif recipe.scheme == "dynamic":
        for name in act_values:
            out.quant[name] = dynamic_activation_spec(recipe)
    if recipe.quantize_embeddings:
        for node in out.nodes:
            if node.op is Op.GATHER and node.inputs[0] in out.constants and node.inputs[0] not in out.quant:
                rows = out.constants[node.inputs[0]]
                if rows.dtype == np.float32:
                    q, spec = weight_spec(rows, QDType.INT8)
                    out.constants[node.inputs[0]] = q
                    out.quant[node.inputs[0]] = spec
    out.validate()
    return out


def gelus_to_rewrite(graph: Graph, exact_floats: bool = False) -> list[Node]:
    """erf GELUs of an 8-bit static model where ``qexport.ir.gelu_rational`` replaces the
    runtimes' own GELU, because their last-ulp differences flip the integers after it
    (docs/decisions/0008-rational-gelu.md):

    - the output is quantized to int16, itself or through Muls by constants (the smoothing
      Mul): int16 steps see the ulps, and the 8-bit layers after them grow the flips;
    - with ``exact_floats`` (the recipe's; docs/decisions/0009-float64-layernorm.md), every
      GELU whose result a quantizer reads.
    """
    consumers = graph.consumers()
    exact = exact_ops(graph) if exact_floats else {}

    def int16_below(value: str) -> bool:
        spec = graph.quant.get(value)
        if spec is not None and not spec.dynamic and spec.dtype is QDType.INT16:
            return True
        return any(
            c.op is Op.MUL and any(v in graph.constants for v in c.inputs) and int16_below(c.outputs[0])
            for c in consumers.get(value, [])
        )

    return [
        n
        for n in graph.nodes
        if n.op is Op.GELU
        and n.attrs.get("approximate", "none") == "none"
        and (int16_below(n.outputs[0]) or n.name in exact)
    ]


def dynamic_activation_spec(recipe: Recipe) -> QuantSpec:
    """The run-time spec of a dynamic recipe: int8 per token (XNNPACK's asymmetric rule, or
    symmetric), or uint7 per tensor (PyTorch's rule)."""
    torch_rule = recipe.activation_dtype == "uint7"
    return QuantSpec(
        QDType(recipe.activation_dtype),
        np.array(1.0, np.float32),
        np.array(0, np.int32),
        axis=None if torch_rule else -1,
        dynamic=True,
        symmetric=recipe.dynamic_symmetric and not torch_rule,
    )


def _record_calibration(out: Graph, calib: CalibrationSet) -> None:
    out.metadata["calibration"] = {
        "origin": calib.origin,
        "samples": calib.size,
        "fingerprint": calib.fingerprint,
        "warnings": calib.warnings,
    }


def _op_input_specs(out: Graph, recipe: Recipe, calib: CalibrationSet) -> None:
    """Static min-max specs on the float inputs of the ops named by ``quantize_op_inputs``."""
    wanted = []
    for node in out.nodes:
        if node.op.value in recipe.quantize_op_inputs:
            for name in node.inputs[:1]:
                info = out.values.get(name)
                if (
                    info is not None
                    and info.dtype == "float32"
                    and name not in out.quant
                    and name not in wanted
                ):
                    wanted.append(name)
    stats = observe_channels(out, calib, wanted)
    dtype = QDType(recipe.activation_dtype)
    for name in wanted:
        lo, hi = float(np.min(stats[name].lo)), float(np.max(stats[name].hi))
        out.quant[name] = activation_spec(lo, hi, dtype)


def _linear_output_specs(out: Graph, recipe: Recipe, calib: CalibrationSet) -> None:
    """8-bit specs (the recipe's activation dtype) on the results of Linears whose input crosses in 8 bits."""
    wanted = [
        node.outputs[0]
        for node in out.nodes
        if node.op is Op.LINEAR
        and (spec := out.quant.get(node.inputs[0])) is not None
        and not spec.dynamic
        and spec.dtype in (QDType.UINT8, QDType.INT8)
    ]
    stats = observe_channels(out, calib, wanted)
    for name in wanted:
        out.quant[name] = grouped_activation_spec(
            stats[name].lo, stats[name].hi, QDType(recipe.activation_dtype), recipe.output_outliers
        )


def sensitivity(
    float_graph: Graph, quantized: Graph, calib: CalibrationSet, act_names: list[str], samples: int = 4
) -> list[tuple[str, float]]:
    """SQNR (dB) of the graph outputs when only one activation group is quantized.

    Weights stay quantized in every run, so each row isolates what that activation costs.
    """
    from qexport.reference.executor import run

    chunk = {k: v[:samples] for k, v in calib.inputs.items()}
    reference = run(float_graph, chunk, simulate=False)
    trial = copy.copy(quantized)
    rows = []
    for name in act_names:
        trial.quant = {k: v for k, v in quantized.quant.items() if k not in act_names or k == name}
        result = run(trial, chunk)
        rows.append((name, _sqnr(reference, result, chunk.get("attention_mask"))))
    return rows


def _sqnr(
    reference: dict[str, np.ndarray], result: dict[str, np.ndarray], mask: np.ndarray | None = None
) -> float:
    """SQNR over all outputs; padded token positions (attention_mask == 0) do not count."""
    signal = noise = 0.0
    for key, ref in reference.items():
        diff = result[key].astype(np.float64) - ref
        ref64 = ref.astype(np.float64)
        if mask is not None and ref.ndim >= 2 and ref.shape[:2] == mask.shape:
            keep = (mask != 0).reshape(mask.shape + (1,) * (ref.ndim - 2))
            diff, ref64 = diff * keep, ref64 * keep
        signal += float(np.sum(np.square(ref64)))
        noise += float(np.sum(np.square(diff)))
    return float(10 * np.log10(signal / noise)) if noise > 0 else float("inf")


def _static_activation_specs(
    out: Graph,
    recipe: Recipe,
    calib: CalibrationSet | None,
    stats: dict,
    act_values: dict,
    int16_groups: frozenset[str] = frozenset(),
    quantize_bias: bool = True,
) -> None:
    samples = {}
    if recipe.observer != "minmax" and calib is not None:
        samples = collect_samples(out, calib, list(act_values))
    for name, (group, scale) in act_values.items():
        st = stats[group.input]
        wide = any(recipe.wants_int16(n.name) for n in group.linears) or name in int16_groups
        dtype = QDType.INT16 if wide else QDType(recipe.activation_dtype)
        if recipe.observer == "minmax" or wide:
            lo, hi = float(np.min(st.lo / scale)), float(np.max(st.hi / scale))
        elif recipe.observer == "percentile":
            lo, hi = percentile_range(samples[name], recipe.percentile)
        else:
            lo, hi = mse_range(samples[name], dtype)
        spec = activation_spec(lo, hi, dtype)
        out.quant[name] = spec
        if not quantize_bias:
            continue
        for node in group.linears:
            bias = node.inputs[2] if len(node.inputs) > 2 else ""
            if bias and bias in out.constants and bias not in out.quant:
                out.constants[bias], out.quant[bias] = integer_bias(
                    out.constants[bias], spec, out.quant[node.inputs[1]]
                )


def integer_bias(bias: np.ndarray, x_spec: QuantSpec, w_spec: QuantSpec) -> tuple[np.ndarray, QuantSpec]:
    """A float bias as int32 with scale ``s_x · s_w`` (per output channel), zero point 0."""
    b_scale = (x_spec.scale * w_spec.scale).astype(np.float32)
    q = np.rint(bias.astype(np.float64) / b_scale)
    q = np.clip(q, QDType.INT32.qmin, QDType.INT32.qmax).astype(np.int32)
    return q, QuantSpec(QDType.INT32, b_scale, np.zeros(b_scale.shape, np.int32), axis=0)
