"""Lower a (quantized) IR graph to an ONNX QDQ model and run it with onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qexport.atomic import write_bytes
from qexport.backends.onnx.cpu import (
    EXACT_U8U8,
    FLOAT_MATMULNBITS,
    NO_DENORMALS,
    flush_denormals,
    own_float_state,
    session_config,
)
from qexport.errors import QExportError
from qexport.ir.graph import Graph, Node, QuantSpec
from qexport.ir.integer_form import is_full_integer
from qexport.ir.linear import LinearForm, classify
from qexport.ir.ops import Op
from qexport.report.notes import WITHOUT_VNNI, note

# 21: int16 and per-axis int8 QuantizeLinear/DequantizeLinear; 23: the Attention op
# (backends/onnx/attention.py). IR version 11 is the one opset 23 came with (onnx 1.18).
OPSET = 23
IR_VERSION = 11
PRODUCER = "qexport"
PRECISION_NOTE = note(
    "onnx: on this CPU (no VNNI) open model.onnx with session config 'session.x64quantprecision' = '1'",
    "onnxruntime's U8S8 kernels saturate on x86 CPUs without VNNI (AVX2-only) and the int8 Linears "
    "lose accuracy unless the session sets it (docs/backend-onnx.md); the manifest's "
    "session_config_x86_without_vnni lists it",
    cpu=WITHOUT_VNNI,
)
SPEED_NOTE = note(
    "onnx: open model.onnx with the manifest's session_config (denormals as zero: ~25 % faster)",
    "SessionOptions.add_session_config_entry('session.set_denormal_as_zero', '1'): softmax over padded "
    "positions otherwise runs on denormals (MiniLM int8 ~25 % slower, same outputs; docs/backend-onnx.md)",
)
# How integer Linears are written (--onnx-linears; docs/backend-onnx.md, "Graph optimizations").
LINEAR_FORMS = ("integer", "qdq")
_LAZY = {"Linear": 1, "Gather": 0}  # inputs whose layout the op's own lowering decides


class OnnxBackend:
    name = "onnx"
    default_recipe = "int8"  # onnxruntime's QGemm needs a static 8-bit input
    suffix = ".onnx"

    def __init__(
        self,
        fuse_attention: bool = True,
        integer_linears: bool = True,
        npu_form: bool | None = None,
    ) -> None:
        # False: attention stays ~13 separate ops, for tools that cannot read the opset-23
        # Attention op (onnxruntime's quantize_dynamic mistakes it for com.microsoft.Attention).
        self.fuse_attention = fuse_attention
        # False: integer Linears as plain QDQ (scales inside the DequantizeLinears). QGemm then
        # rescales inside its kernel, ~5 % faster in onnxruntime, but a runtime that does not
        # fuse rounds every product (38 dB from the fused result). See docs/backend-onnx.md.
        self.integer_linears = integer_linears
        # The form Qualcomm's HTP (onnxruntime's QNN provider) takes whole: activations as
        # uint8/uint16 (its Abs and MatMul refuse int16; same real values, zero point shifted),
        # plain QDQ Linears and static shapes [1, seq]. None: on for full-integer graphs
        # (--for npu). docs/integer.md.
        self.npu_form = npu_form

    def writes_npu_form(self, graph: Graph) -> bool:
        """Whether ``graph`` is written in the NPU form (``npu_form``; None: full-integer graphs)."""
        return is_full_integer(graph) if self.npu_form is None else self.npu_form

    def check(self, graph: Graph) -> None:
        from qexport.backends import check_lowerable
        from qexport.backends.onnx.lowering import LOWERINGS

        check_lowerable(graph, "onnx", LOWERINGS)

    def build(self, graph: Graph) -> Any:
        """The onnx.ModelProto for ``graph`` (``lower`` checks its bytes with onnx.checker)."""
        from onnx import helper

        from qexport import __version__
        from qexport.backends.onnx.attention import lower_attention
        from qexport.backends.onnx.builder import OnnxBuilder
        from qexport.backends.onnx.lowering import _ONNX_DTYPES, LOWERINGS
        from qexport.ir.attention import find_attention

        self.check(graph)
        npu = self.writes_npu_form(graph)
        # NPU form: Linears as plain QDQ (DequantizeLinear -> MatMul -> QuantizeLinear), the
        # pattern QNN maps onto its integer FullyConnected.
        b = OnnxBuilder(graph, integer_linears=self.integer_linears and not npu, unsigned=npu)
        seq = int(graph.metadata.get("capture", {}).get("seq_len", 128))

        def shape(dims: tuple[Any, ...]) -> list[Any]:  # static [1, seq] for NPU compilers
            return [{"batch": 1, "seq": seq}.get(d, d) if npu else d for d in dims]

        islands = {m.covered[-1]: m for m in (find_attention(graph) if self.fuse_attention else [])}
        inside = {name for m in islands.values() for name in m.covered[:-1]}
        for node in graph.nodes:
            if node.name in inside:
                continue  # computed by the island's Attention node, emitted at its last node
            # Linear weights are laid out by lower_linear itself (transposed), not resolved here.
            xs = [
                ""
                if (node.op.value in ("Linear", "Gather") and i == _LAZY[node.op.value])
                else _resolve(b, graph, name)
                for i, name in enumerate(node.inputs)
            ]
            out = node.outputs[0]
            spec = graph.quant.get(out)
            produced = f"{out}_float" if spec is not None else out
            if node.name in islands:
                lower_attention(b, islands[node.name], produced)
            else:
                LOWERINGS[node.op](b, node, xs, produced)
            if spec is not None and spec.dynamic:
                _dynamic_fake_quant(b, out, produced, spec)
            elif spec is not None:
                b.qdq_activation(out, produced, spec)
        outputs = []
        for public, value in graph.outputs.items():
            b.node("Identity", [value], public, name=f"output.{public}")
            info = graph.values[value]
            outputs.append(helper.make_tensor_value_info(public, _ONNX_DTYPES[info.dtype], shape(info.shape)))
        b.prune(set(graph.outputs))
        inputs = [
            helper.make_tensor_value_info(n, _ONNX_DTYPES[i.dtype], shape(i.shape))
            for n, i in graph.inputs.items()
        ]
        model = helper.make_model(
            helper.make_graph(b.nodes, "qexport", inputs, outputs),
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            producer_version=__version__,
        )
        # Initializers join the model one at a time and the builder's copy is dropped at once:
        # make_graph + make_model would hold three copies of every weight (BERT-large: +1 GB).
        for name in list(b.initializers):
            model.graph.initializer.append(b.initializers.pop(name))
        model.ir_version = IR_VERSION
        recipe = graph.metadata.get("recipe", {})
        helper.set_model_props(model, {"qexport.recipe": str(recipe.get("name", recipe))})
        return model

    def lower(self, graph: Graph, path: Path) -> dict[str, Any]:
        import onnx

        model = self.build(graph)
        ir_version = model.ir_version
        data = model.SerializeToString(deterministic=True)
        del model  # the proto and its bytes are each the size of the model: hold one at a time
        try:
            onnx.checker.check_model(data, full_check=True)  # checks these very bytes
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise QExportError(
                f"onnx backend produced an invalid model: {str(exc).splitlines()[0]}"
            ) from None
        write_bytes(Path(path), data)
        npu = self.writes_npu_form(graph)
        facts: dict[str, Any] = {
            "opset": OPSET,
            "npu_form": npu,  # uint16 for 16-bit tensors, static shapes: what QNN's HTP takes
            "ir_version": ir_version,
            "linears": LINEAR_FORMS[0] if self.integer_linears and not npu else LINEAR_FORMS[1],
        }
        notes = [] if npu else slow_path_notes(graph, self.integer_linears)  # CPU advice only
        if any(node.op is Op.SOFTMAX for node in graph.nodes) and not npu:
            notes.append(SPEED_NOTE)
        if any(integer_input_linear(graph, node) for node in graph.nodes):  # U8S8 saturates there
            notes.append(PRECISION_NOTE)
        facts["session_config"] = {
            **NO_DENORMALS,
            **(FLOAT_MATMULNBITS if float_linears(graph, self.integer_linears) else {}),
        }
        facts["session_config_x86_without_vnni"] = EXACT_U8U8
        if notes:
            facts["notes"] = notes
        return facts

    def session(self, path: Path, *, threads: int = 2, optimize: bool = True) -> Any:

        return new_session(str(path), session_options(threads, optimize))

    def run_intermediates(self, path: Path, inputs: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """Named intermediate tensors (IR value names) for the bisector."""
        return run_intermediates(path, inputs, names)

    def run(self, path: Path, inputs: dict[str, Any], *, session: Any = None) -> dict[str, Any]:
        sess = session or self.session(path)
        feed = {i.name: np.asarray(inputs[i.name]).astype(np.int64) for i in sess.get_inputs()}
        names = [o.name for o in sess.get_outputs()]
        with flush_denormals():
            return dict(zip(names, sess.run(names, feed), strict=True))


def new_session(model: str | bytes, options: Any) -> Any:
    """An onnxruntime CPU session that leaves this thread's float state as it found it."""
    import onnxruntime as ort

    with own_float_state():
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def session_options(threads: int = 2, optimize: bool = True) -> Any:
    """The onnxruntime options every qexport measurement uses: exact integer kernels on this CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in session_config().items():
        options.add_session_config_entry(key, value)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def integer_input_linear(graph: Graph, node: Node) -> bool:
    """A ``STATIC`` Linear with an 8-bit input: the kind onnxruntime's integer kernels (QGemm,
    MatMulInteger) are for, and whose U8S8 forms saturate on x86 without VNNI."""
    if node.op is not Op.LINEAR:
        return False
    info = classify(graph, node)
    return info.form is LinearForm.STATIC and info.eight_bit_input


def steps_linear(graph: Graph, node: Node) -> bool:
    """A ``STEPS`` Linear (qexport.ir.linear) with a float bias: lowered as a float32 Gemm of the
    integer steps ``q - z`` (``lowering._dynamic_linear_inputs``), exactly as the IR computes it."""
    if node.op is not Op.LINEAR:
        return False
    info = classify(graph, node)
    return info.form is LinearForm.STEPS and info.b_spec is None


def qgemm_linear(graph: Graph, node: Node) -> bool:
    """A ``STATIC`` Linear onnxruntime's integer kernels take: 8-bit input, symmetric int8 weight,
    and a float bias or an int32 one of scale s_x·s_w (``lowering._integer_linear_inputs``)."""
    if node.op is not Op.LINEAR:
        return False
    info = classify(graph, node)
    return (
        info.form is LinearForm.STATIC
        and info.eight_bit_input
        and info.symmetric_weight
        and (info.b_spec is None or info.integer_bias)
    )


def float_linears(graph: Graph, integer_linears: bool = True) -> int:
    """Linears with a quantized weight but no static 8-bit input (nor, in the integer form, run-time
    integer steps): onnxruntime has no integer kernel for them and runs MatMulNBits on a float input."""
    return sum(
        node.op is Op.LINEAR
        and node.inputs[1] in graph.quant
        and not integer_input_linear(graph, node)
        and not (integer_linears and steps_linear(graph, node))
        for node in graph.nodes
    )


def slow_path_notes(graph: Graph, integer_linears: bool = True) -> list[dict[str, Any]]:
    """What in this graph onnxruntime cannot run on its integer kernels (docs/backend-onnx.md):
    it fuses QGemm only for a static per-tensor 8-bit input, an int8 weight and a per-tensor
    (or float) output."""
    per_channel_outputs = 0
    for node in graph.nodes:
        if node.op is not Op.LINEAR or node.inputs[1] not in graph.quant:
            continue
        y_spec = graph.quant.get(node.outputs[0])
        if integer_input_linear(graph, node) and y_spec is not None and y_spec.axis is not None:
            per_channel_outputs += 1
    notes = []
    if integer_linears and (steps := sum(steps_linear(graph, node) for node in graph.nodes)):
        notes.append(
            note(
                f"onnx: {steps} Linears with run-time input scales run as float Gemms (slower than fp32); "
                "int8 is the fast ONNX recipe",
                "No onnxruntime integer kernel takes per-token (run-time) input scales: they run as "
                "float32 Gemms of the integer steps, the IR's numbers but slower than fp32 (MiniLM "
                "dynamic ~1.3x; docs/backend-onnx.md)",
            )
        )
    if count := float_linears(graph, integer_linears):
        notes.append(
            note(
                f"onnx: {count} quantized Linears run as float MatMuls (no faster than fp32); "
                "int8 is the fast ONNX recipe",
                "Linears with dynamic, int16 or no input quantization run as float MatMuls on the int8 "
                "weights. Create the session with SessionOptions.add_session_config_entry("
                "'session.qdq_matmulnbits_accuracy_level', '1'): onnxruntime's default (4) re-quantizes "
                "their float inputs to int8 at run time (MiniLM dynamic: 30 instead of 36 dB vs the IR; "
                "docs/backend-onnx.md)",
            )
        )
    if per_channel_outputs:
        notes.append(
            note(
                f"onnx: {per_channel_outputs} per-channel Linear outputs are quantized with float ops "
                "(about fp32 speed); int8 is the fast ONNX recipe",
                "onnxruntime's per-axis QuantizeLinear is ~30x slower than float ops, so outputs with "
                "per-channel (outlier) params are quantized with float ops (docs/backend-onnx.md)",
            )
        )
    return notes


def run_intermediates(path: Path, inputs: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Run with every IR value in ``names`` that the ONNX graph carries exposed as an output."""
    import onnx

    model = onnx.load(str(path))
    produced = {o for node in model.graph.node for o in node.output}
    existing = {o.name for o in model.graph.output}
    wanted = [n for n in names if n in produced and n not in existing]
    for name in wanted:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = new_session(model.SerializeToString(), session_options())
    feed = {i.name: np.asarray(inputs[i.name]).astype(np.int64) for i in session.get_inputs()}
    with flush_denormals():
        return dict(zip(wanted, session.run(wanted, feed), strict=True))


def _resolve(b: Any, graph: Graph, name: str) -> str:
    """ONNX name for an IR input: quantized constants become DequantizeLinear outputs."""
    if not name:
        return ""
    if name in graph.constants:
        spec = graph.quant.get(name)
        array = graph.constants[name]
        if spec is None:
            return b.initializer(name, array)
        return b.dequantized_constant(name, array, spec, axis=spec.axis)
    return name


def _dynamic_fake_quant(b: Any, out: str, produced: str, spec: QuantSpec) -> None:
    """Run-time quantization (per token for axis=-1) expressed in float ops."""
    if not spec.symmetric:
        _asymmetric_dynamic_fake_quant(b, out, produced, spec)
        return
    qmax = np.float32(spec.dtype.qmax)
    axes = b.const(np.array([spec.axis if spec.axis is not None else 0], np.int64))
    absx = b.node("Abs", [produced], f"{out}_abs")
    if spec.axis is None:
        amax = b.node("ReduceMax", [absx], f"{out}_amax", keepdims=0)
    else:
        amax = b.node("ReduceMax", [absx, axes], f"{out}_amax", keepdims=1)
    scale = b.node("Div", [amax, b.const(np.array(qmax))], f"{out}_dynscale")
    positive = b.node("Greater", [amax, b.const(np.array(0, np.float32))], f"{out}_positive")
    safe = b.node("Where", [positive, scale, b.const(np.array(1, np.float32))], f"{out}_scale_safe")
    ratio = b.node("Div", [produced, safe], f"{out}_ratio")
    rounded = b.node("Round", [ratio], f"{out}_round")
    clipped = b.node("Clip", [rounded, b.const(np.array(-qmax)), b.const(np.array(qmax))], f"{out}_clip")
    b.node("Mul", [clipped, safe], out, name=f"{out}_dynamic_quant")


def _asymmetric_dynamic_fake_quant(b: Any, out: str, produced: str, spec: QuantSpec) -> None:
    """XNNPACK's asymmetric int8 rule (``qexport.ir.arith.dynamic_params``) in float ops."""

    def f32(value: float) -> str:
        return str(b.const(np.array(value, np.float32)))

    keep = {"keepdims": 0} if spec.axis is None else {"keepdims": 1}
    reduce_in = [produced] if spec.axis is None else [produced, b.const(np.array([spec.axis], np.int64))]
    low = b.node("ReduceMin", reduce_in, f"{out}_rmin", **keep)
    high = b.node("ReduceMax", reduce_in, f"{out}_rmax", **keep)
    low = b.node("Min", [low, f32(0.0)], f"{out}_min0")
    high = b.node("Max", [high, f32(0.0)], f"{out}_max0")
    width = b.node("Sub", [high, low], f"{out}_width")
    nonzero = b.node("Greater", [width, f32(0.0)], f"{out}_nonzero")
    safe_width = b.node("Where", [nonzero, width, f32(1.0)], f"{out}_width_safe")
    inverse = b.node("Div", [f32(255.0), safe_width], f"{out}_m_raw")
    mult = b.node("Where", [nonzero, inverse, f32(1.0)], f"{out}_multiplier")
    low_s = b.node("Mul", [low, mult], f"{out}_min_scaled")
    high_s = b.node("Mul", [high, mult], f"{out}_max_scaled")
    from_min = b.node("Add", [f32(-128.0), low_s], f"{out}_err_min")
    from_max = b.node("Add", [f32(127.0), high_s], f"{out}_err_max")
    use_min = b.node(
        "Greater", [b.node("Add", [from_min, from_max], f"{out}_err_sum"), f32(0.0)], f"{out}_use_min"
    )
    zp_min = b.node("Sub", [f32(-128.0), low_s], f"{out}_zp_from_min")
    zp_max = b.node("Sub", [f32(127.0), high_s], f"{out}_zp_from_max")
    zp = b.node("Where", [use_min, zp_min, zp_max], f"{out}_zp_raw")
    zp = b.node("Round", [b.node("Clip", [zp, f32(-128.0), f32(127.0)], f"{out}_zp_clip")], f"{out}_zp")
    scaled = b.node("Round", [b.node("Mul", [produced, mult], f"{out}_scaled")], f"{out}_rounded")
    q = b.node("Clip", [b.node("Add", [scaled, zp], f"{out}_shifted"), f32(-128.0), f32(127.0)], f"{out}_q")
    # Reciprocal, not Div(1, m): onnxruntime's DivMulFusion turns Mul(x, Div(1, m)) into Div(x, m),
    # one ulp off the rule's x * (1/m) on some rows (tests/test_dynamic_rule.py)
    scale = b.node("Reciprocal", [mult], f"{out}_dynscale")
    steps = b.node("Sub", [q, zp], f"{out}_steps")
    b.cache[f"{out}:steps"] = (steps, scale)  # q - zp and the row scale, for integer Linears
    b.node("Mul", [steps, scale], out, name=f"{out}_dynamic_quant")
