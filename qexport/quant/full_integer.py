"""The ``integer`` scheme: every value between ops crosses in int8 or int16 (docs/integer.md).

Steps, on a copy of the float graph:
1. rewrite it into its integer form (``qexport.ir.integer_form``: LayerNorm and GELU as
   primitive ops, the attention mask as a table lookup); with 8-bit residuals and LayerNorms,
   first divide the residual sums' outlier channels by powers of two
   (``qexport.ir.residual_scale``, from their calibrated channel peaks);
2. give each node a precision (int8 or int16; ``precisions``) and insert a Requantize where a
   value meets a reader of the other precision;
3. quantize Linear weights per output channel (int8, symmetric), embedding tables per tensor
   (int16 when small, int8 when large: the word table), other float constants per tensor in
   their reader's precision, Linear biases to int32 at ``s_x·s_w``;
4. observe every activation on the calibration data (float execution) and give it a static
   per-tensor spec, by the rules of its op (``_output_spec``).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass

import numpy as np

from qexport.errors import QExportError
from qexport.ir.arith import dequantize, quantize
from qexport.ir.graph import Graph, Node, QDType, QuantSpec, ValueInfo, copy_graph
from qexport.ir.integer_form import LAYOUT_OPS, gelus_as_tanh, to_integer_form
from qexport.ir.ops import Op
from qexport.ir.residual_scale import channel_divisors, residual_adds, scale_residuals
from qexport.quant.calibration import CalibrationSet, ChannelStats, observe_channels
from qexport.quant.ranges import activation_spec, weight_spec

SMALL_TABLE = 1 << 20
"""Embedding tables up to this many entries are stored in 16 bits (BERT's position table: int8
per tensor is 15 dB on MiniLM's, int16 63 dB); larger ones (the word table) in 8 bits."""
MASK_SPAN = 20.0
"""A masked score saturates at the bottom of its spec's range; the range is widened to at least
this below its top, so a masked key's softmax weight is at most exp(-20) (2e-9)."""

FIXED_OUTPUTS: dict[Op, dict[QDType, tuple[float, int]]] = {
    Op.SOFTMAX: {QDType.INT8: (1 / 256, -128), QDType.INT16: (1 / 32768, 0)},
    Op.TANH: {QDType.INT8: (1 / 128, 0), QDType.INT16: (1 / 32768, 0)},
}
"""Output params fixed by the op (TFLite's integer kernels require exactly these)."""

ROLES = ("attention", "projection", "linear", "gelu", "residual", "layer_norm", "other")
"""What each op of an integer-form BERT does; a recipe chooses a precision per role.

- ``attention``: the score and context MatMuls, the masked Add, Softmax;
- ``projection``: Linears whose output feeds the attention MatMuls (query, key, value);
- ``linear``: the other Linears (its input, hence its kernel: int8, or 16x8, and its output);
- ``gelu``: GELU (one 8-bit LUT op, or the 16-bit tanh form);
- ``residual``: Adds that are not masks (residual connections, embedding sums);
- ``layer_norm``: the ops LayerNorm became;
- ``other``: the rest (pooler tanh)."""


@dataclass(frozen=True)
class Precisions:
    """int8 for the roles in ``int8``, ``base`` for the others."""

    base: QDType
    int8: frozenset[str] = frozenset()

    def of(self, role: str) -> QDType:
        return QDType.INT8 if role in self.int8 else self.base


def quantize_full_integer(
    out: Graph,
    precisions: Precisions,
    calib: CalibrationSet,
    progress: Callable[[int, int], None] | None = None,
    *,
    auto_int8_db: float | None = None,
) -> Graph:
    """Apply the integer scheme to ``out`` (a private copy) in place and return it.

    With ``auto_int8_db``: starting from ``precisions``, each role in turn moves to int8 when
    the calibration outputs stay at least that many dB from the float graph's (greedy, in
    ``ROLES`` order); the table is kept in ``metadata["sensitivity"]``.
    """
    float_graph = copy_graph(out)
    eight_bit_norms = precisions.of("layer_norm") is QDType.INT8
    scales: dict[str, str] = {}
    if eight_bit_norms and precisions.of("residual") is QDType.INT8:
        scales = scale_residuals(out, _channel_divisors(out, calib))
    prescale = "peak" if eight_bit_norms else "root_peak"
    form = to_integer_form(out, prescale=prescale, channel_scales=scales)
    form["channel_scaled"] = sorted(scales)
    role = roles(out, form)
    if auto_int8_db is not None:
        precisions = _choose(float_graph, out, form, role, precisions, calib, auto_int8_db)
    _apply(out, form, role, precisions, calib, progress)
    out.metadata["integer_form"] = {
        **form,
        "prescale": prescale,
        "int8_roles": sorted(precisions.int8),
        "base": precisions.base.value,
    }
    return out


def _channel_divisors(graph: Graph, calib: CalibrationSet) -> dict[str, np.ndarray]:
    """LayerNorm name -> ``d`` of its input sum's channels (``qexport.ir.residual_scale``), from
    the sums' calibrated per-channel peaks."""
    adds = residual_adds(graph)
    stats = observe_channels(graph, calib, [add.outputs[0] for add in adds.values()])
    return {
        name: channel_divisors(np.maximum(np.abs(stats[add.outputs[0]].lo), np.abs(stats[add.outputs[0]].hi)))
        for name, add in adds.items()
    }


def _apply(
    out: Graph,
    form: dict[str, list[str]],
    role: dict[str, str],
    precisions: Precisions,
    calib: CalibrationSet,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    def precision(node: Node) -> QDType:
        return precisions.of(role.get(node.name, "other"))

    wide_gelus = {n.name for n in out.nodes if n.op is Op.GELU and precision(n) is QDType.INT16}
    gelus_as_tanh(out, wide_gelus)
    for node in out.nodes:
        if node.name not in role:
            role[node.name] = "gelu" if any(node.name.startswith(g + ".") for g in wide_gelus) else "other"
    exact = {f"{name}.channel_scale{end}" for name in form["channel_scaled"] for end in ("", "_inverse")}
    _quantize_constants(out, precision, set(form["masks"]), exact)
    dtypes = _insert_requantize(out, precision)
    values = [n.outputs[0] for n in out.nodes if _float(out, n.outputs[0]) and n.op not in LAYOUT_OPS]
    producer, observed = out.producer(), set(values)
    softmax_inputs = {_observed(n.inputs[0], observed, producer) for n in out.nodes if n.op is Op.SOFTMAX}
    stats = observe_channels(out, calib, values, on_batch=progress, row_peaks=softmax_inputs)
    ranges = {v: (float(np.min(s.lo)), float(np.max(s.hi))) for v, s in stats.items()}
    masked = _masked_adds(out, set(form["masks"]))
    _floor_scores(out, stats, ranges, masked, producer)
    _floor_masks(out, form["masks"], masked, ranges, producer)
    for node in out.nodes:
        value = node.outputs[0]
        if not _float(out, value):
            continue
        if node.op is Op.GATHER and node.inputs[0] in out.quant:
            out.quant[value] = out.quant[node.inputs[0]]  # a table's rows keep its params
        else:
            out.quant[value] = _output_spec(out, node, dtypes[value], ranges, masked, producer)
    _requantize_tables(out)
    _quantize_biases(out)
    out.validate()


def roles(graph: Graph, form: dict[str, list[str]]) -> dict[str, str]:
    """Node name -> role (``ROLES``) for a graph in integer form."""
    masked = set(_masked_adds(graph, set(form["masks"])))
    prefixes = tuple(f"{name}." for name in form["layer_norms"])
    consumers = graph.consumers()

    def feeds_matmul(value: str) -> bool:
        readers = consumers.get(value, [])
        return any(r.op is Op.MATMUL or (r.op in LAYOUT_OPS and feeds_matmul(r.outputs[0])) for r in readers)

    result = {}
    for node in graph.nodes:
        if node.name.startswith(prefixes):
            result[node.name] = "layer_norm"
        elif node.op in (Op.MATMUL, Op.SOFTMAX) or node.outputs[0] in masked | set(form["masks"]):
            result[node.name] = "attention"
        elif node.op is Op.LINEAR:
            result[node.name] = "projection" if feeds_matmul(node.outputs[0]) else "linear"
        elif node.op is Op.GELU:
            result[node.name] = "gelu"
        elif node.op is Op.ADD:
            result[node.name] = "residual"
    return result


def _choose(
    float_graph: Graph,
    form_graph: Graph,
    form: dict[str, list[str]],
    role: dict[str, str],
    start: Precisions,
    calib: CalibrationSet,
    target_db: float,
    samples: int = 8,
) -> Precisions:
    """Greedy: move each role to int8 while the outputs stay ``target_db`` from float."""
    from qexport.quant.engine import _sqnr  # the engine's masked SQNR
    from qexport.reference.executor import run

    chunk = CalibrationSet({k: v[:samples] for k, v in calib.inputs.items()}, calib.origin)
    reference = run(float_graph, chunk.inputs, simulate=False)
    chosen = start
    table = []
    for candidate in ROLES:
        if candidate in chosen.int8 or chosen.base is QDType.INT8:
            continue
        trial_precisions = Precisions(chosen.base, chosen.int8 | {candidate})
        trial = copy_graph(form_graph)
        _apply(trial, form, dict(role), trial_precisions, chunk)
        db = _sqnr(reference, run(trial, chunk.inputs), chunk.inputs.get("attention_mask"))
        keep = db >= target_db
        table.append({"role": candidate, "sqnr_db": round(db, 2), "int8": keep})
        if keep:
            chosen = trial_precisions
    form_graph.metadata["sensitivity"] = table
    return chosen


def _float(graph: Graph, value: str) -> bool:
    info = graph.values.get(value)
    return info is not None and info.dtype == "float32"


def _output_spec(
    graph: Graph,
    node: Node,
    dtype: QDType,
    ranges: dict[str, tuple[float, float]],
    masked: dict[str, str],
    producer: dict[str, Node],
) -> QuantSpec:
    value = node.outputs[0]
    if node.op in LAYOUT_OPS:
        return graph.quant[node.inputs[0]]
    if node.op in FIXED_OUTPUTS:
        scale, zero = FIXED_OUTPUTS[node.op][dtype]
        return QuantSpec(dtype, np.array(scale, np.float32), np.array(zero, np.int32))
    if node.op is Op.REQUANTIZE:
        lo, hi = _range(graph, node.inputs[0], ranges, producer)
    else:
        lo, hi = ranges[value]
    if value in masked:  # real keys: the scores' range; masked keys saturate at its bottom
        lo, hi = _range(graph, masked[value], ranges, producer)
        lo = min(lo, hi - MASK_SPAN)
    return activation_spec(lo, hi, dtype)


def _requantize_tables(graph: Graph) -> None:
    """Requantize a table once, here, rather than each looked-up row at run time: a Requantize
    to a narrower type that reads a Gather of a constant table (and is its only reader) becomes
    the table's params. (Not to a wider one: the int8 word table read in int16 would double.)

    The same integers (the reference's Requantize is ``quantize(dequantize(q))``, elementwise,
    so it commutes with the row lookup), one op fewer, and nothing left to a runtime's rounding:
    LiteRT's int16 -> int8 QUANTIZE rounds twice (to 1/128 of a step, then to a step), so MiniLM's
    token-type rows came out one step off on 3 of 384 channels (13.497 steps -> 14)."""
    consumers = graph.consumers()
    producer = graph.producer()
    kept = []
    for node in graph.nodes:
        gather = producer.get(node.inputs[0]) if node.op is Op.REQUANTIZE else None
        if (
            gather is None
            or gather.op is not Op.GATHER
            or gather.inputs[0] not in graph.constants
            or len(consumers[gather.outputs[0]]) != 1
            or len(consumers[gather.inputs[0]]) != 1
            or graph.quant[node.outputs[0]].dtype.qmax > graph.quant[gather.inputs[0]].dtype.qmax
        ):
            kept.append(node)
            continue
        table, spec = gather.inputs[0], graph.quant[node.outputs[0]]
        graph.constants[table] = quantize(dequantize(graph.constants[table], graph.quant[table]), spec)
        graph.quant[table] = spec
        del graph.values[gather.outputs[0]], graph.quant[gather.outputs[0]]
        gather.outputs = [node.outputs[0]]
    graph.nodes = kept


def _floor_scores(
    graph: Graph,
    stats: dict[str, ChannelStats],
    ranges: dict[str, tuple[float, float]],
    masked: dict[str, str],
    producer: dict[str, Node],
) -> None:
    """Raise the bottom of each softmax input's range (and of the scores under its mask) to
    ``MASK_SPAN`` below the lowest row peak seen in calibration.

    Softmax is relative to each row's peak: a score ``MASK_SPAN`` below it weighs at most
    exp(-20), so clamping it there changes nothing, while the range's step shrinks. MiniLM's
    layer-0 scores span [-108, 50] (one head), so int8 spent 0.66 per step where every row
    peaks at 0 or more: with the floor at -20 the step is 0.30."""
    for node in graph.nodes:
        if node.op is not Op.SOFTMAX:
            continue
        value = _observed(node.inputs[0], ranges, producer)
        if value not in stats:  # a softmax of a graph input: nothing observed
            continue
        floor = stats[value].lowest_peak - MASK_SPAN
        for name in {value, _observed(masked.get(value, value), ranges, producer)}:
            lo, hi = ranges[name]
            ranges[name] = (max(lo, min(floor, hi - MASK_SPAN)), hi)


def _floor_masks(
    graph: Graph,
    masks: list[str],
    masked: dict[str, str],
    ranges: dict[str, tuple[float, float]],
    producer: dict[str, Node],
) -> None:
    """Set each mask table's "masked" entry to one score span below the lowest masked score
    range: every masked score still saturates at the bottom of its range, and the table's scale
    stays within ~10x of the scores' (integer ADD kernels such as XNNPACK's refuse or misround
    scale ratios of ~1000, which MASK_FLOOR's -10000 would give)."""
    floor = 0.0
    for scores in masked.values():
        lo, hi = _range(graph, scores, ranges, producer)
        lo = min(lo, hi - MASK_SPAN)
        floor = min(floor, lo - (hi - lo))
    for value in masks:
        lookup = producer[value]
        while lookup.op is not Op.GATHER:  # the mask was moved by layout ops after the lookup
            lookup = producer[lookup.inputs[0]]
        table = lookup.inputs[0]
        spec = graph.quant[table]
        floats = np.maximum(dequantize(graph.constants[table], spec), np.float32(floor))
        graph.constants[table], graph.quant[table] = _per_tensor(floats, spec.dtype)


def _range(
    graph: Graph, value: str, ranges: dict[str, tuple[float, float]], producer: dict[str, Node]
) -> tuple[float, float]:
    return ranges[_observed(value, ranges, producer)]


def _observed(value: str, observed: Container[str], producer: dict[str, Node]) -> str:
    """The observed value whose range ``value`` has: itself, or what a layout op moved."""
    while value not in observed and value in producer:
        value = producer[value].inputs[0]  # layout ops move values without changing them
    return value


def _masked_adds(graph: Graph, masks: set[str]) -> dict[str, str]:
    """Adds of a mask lookup (moved by layout ops or requantized) to scores: output -> scores."""
    carried = set(masks)
    result = {}
    for node in graph.nodes:
        if node.op in LAYOUT_OPS | {Op.REQUANTIZE} and node.inputs[0] in carried:
            carried.add(node.outputs[0])
        elif node.op is Op.ADD and any(v in carried for v in node.inputs):
            result[node.outputs[0]] = next(v for v in node.inputs if v not in carried)
    return result


def _quantize_constants(
    graph: Graph, precision: Callable[[Node], QDType], masks: set[str], exact: set[str]
) -> None:
    readers: dict[str, list[Node]] = graph.consumers()
    for name, array in list(graph.constants.items()):
        if array.dtype != np.float32 or name in graph.quant:
            continue
        nodes = readers.get(name, [])
        if not nodes:
            continue
        first = nodes[0]
        if first.op is Op.LINEAR and first.inputs[1] == name:
            q, spec = weight_spec(array, QDType.INT8)
        elif first.op is Op.LINEAR:
            continue  # a bias: quantized once the input's spec is known
        elif first.op is Op.GATHER and first.outputs[0] in masks:
            q, spec = _per_tensor(array, precision(first))  # in the precision of the scores
        elif first.op is Op.GATHER:
            dtype = QDType.INT16 if array.size <= SMALL_TABLE else QDType.INT8
            q, spec = _per_tensor(array, dtype)
        else:
            dtypes = {precision(n) for n in nodes}
            if len(dtypes) > 1:
                raise QExportError(f"constant {name!r} is read in int8 and in int16; it can have one type")
            q, spec = (_powers_of_two if name in exact else _per_tensor)(array, dtypes.pop())
        graph.constants[name] = q
        graph.quant[name] = spec


def _per_tensor(array: np.ndarray, dtype: QDType) -> tuple[np.ndarray, QuantSpec]:
    """Symmetric per-tensor params (zero point 0, ``scale = max|x| / qmax``)."""
    amax = float(np.max(np.abs(array))) if array.size else 0.0
    scale = np.float32(amax / dtype.qmax if amax > 0 else 1.0)
    q = np.clip(np.rint(array / scale), -dtype.qmax, dtype.qmax).astype(dtype.storage)
    return q, QuantSpec(dtype, np.array(scale, np.float32), np.array(0, np.int32))


def _powers_of_two(array: np.ndarray, dtype: QDType) -> tuple[np.ndarray, QuantSpec]:
    """Per-tensor params holding powers of two exactly: a power-of-two scale (zero point 0)."""
    scale = np.float32(np.exp2(np.ceil(np.log2(float(np.max(np.abs(array))) / dtype.qmax))))
    q = array / scale
    if np.any(q != np.rint(q)) or np.any(np.abs(q) > dtype.qmax):
        raise QExportError(f"constant of {array.size} values is not exact at scale {scale}")
    return q.astype(dtype.storage), QuantSpec(dtype, np.array(scale, np.float32), np.array(0, np.int32))


def _insert_requantize(graph: Graph, precision: Callable[[Node], QDType]) -> dict[str, QDType]:
    """Give each float value its integer type and insert Requantize nodes where a reader needs
    the other one. Returns value -> integer type."""
    dtypes: dict[str, QDType] = {}
    converted: dict[tuple[str, QDType], str] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op is Op.GATHER and node.inputs[0] in graph.quant:
            dtypes[node.outputs[0]] = graph.quant[node.inputs[0]].dtype
            nodes.append(node)
            continue
        if node.op in LAYOUT_OPS:
            if node.inputs[0] in dtypes:
                dtypes[node.outputs[0]] = dtypes[node.inputs[0]]
            nodes.append(node)
            continue
        want = precision(node)
        for i, value in enumerate(node.inputs):
            if value in dtypes and dtypes[value] is not want:
                key = (value, want)
                if key not in converted:
                    name = f"{value}.as_{want.value}"
                    graph.values[name] = ValueInfo("float32", graph.values[value].shape)
                    nodes.append(Node(name, Op.REQUANTIZE, [value], [name]))
                    dtypes[name] = want
                    converted[key] = name
                node.inputs[i] = converted[key]
        for value in node.outputs:
            if _float(graph, value):
                dtypes[value] = want
        nodes.append(node)
    graph.nodes = nodes
    return dtypes


def _quantize_biases(graph: Graph) -> None:
    for node in graph.nodes:
        if node.op is not Op.LINEAR or len(node.inputs) < 3 or not node.inputs[2]:
            continue
        bias = node.inputs[2]
        if bias in graph.quant:
            continue
        b_scale = (graph.quant[node.inputs[0]].scale * graph.quant[node.inputs[1]].scale).astype(np.float32)
        q = np.rint(graph.constants[bias].astype(np.float64) / b_scale)
        if np.any(np.abs(q) > QDType.INT32.qmax):
            raise QExportError(f"bias of {node.name!r} does not fit int32 at scale s_x·s_w")
        graph.constants[bias] = q.astype(np.int32)
        graph.quant[bias] = QuantSpec(QDType.INT32, b_scale, np.zeros(b_scale.shape, np.int32), axis=0)
