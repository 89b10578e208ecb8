"""Lower a (quantized) IR graph to a LiteRT flatbuffer of built-in ops; run it with LiteRT."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from qexport.atomic import write_bytes
from qexport.errors import QExportError
from qexport.ir.graph import Graph
from qexport.ir.integer_form import is_full_integer
from qexport.ir.linear import LinearForm, classify
from qexport.ir.ops import Op
from qexport.report.notes import note

FLOAT_OPS = (Op.LAYER_NORM, Op.SOFTMAX, Op.GELU, Op.MATMUL, Op.TANH, Op.DIV, Op.EXP, Op.SQRT, Op.RSQRT)


class TfliteBackend:
    name = "tflite"
    default_recipe = "dynamic"  # TFLite's int8 FCs need integer outputs or run-time input scales
    suffix = ".tflite"

    def __init__(self, *, integer_io: bool = False) -> None:
        self.integer_io = integer_io

    def check(self, graph: Graph) -> None:
        from qexport.backends import check_lowerable
        from qexport.backends.tflite.lowering import LOWERINGS

        if is_full_integer(graph):
            from qexport.backends.tflite.integer import check_integer

            check_integer(graph)
            return
        check_lowerable(graph, "tflite", LOWERINGS)
        if self.integer_io:
            _check_full_integer(graph)

    def build(self, graph: Graph, seq_len: int | None = None) -> memoryview:
        """The .tflite bytes for ``graph`` with static shape [1, seq_len]."""
        from qexport import __version__
        from qexport.backends.tflite.context import Ctx
        from qexport.backends.tflite.integer import INTEGER_LOWERINGS, build_outputs
        from qexport.backends.tflite.lowering import LOWERINGS

        self.check(graph)
        integer = is_full_integer(graph)
        table = INTEGER_LOWERINGS if integer else LOWERINGS
        seq = int(seq_len or graph.metadata.get("capture", {}).get("seq_len", 128))
        ctx = Ctx(graph, seq)
        inputs = {}
        for name, info in graph.inputs.items():
            dtype = "int32" if info.dtype == "int64" else info.dtype
            ctx.b.tensor(name, ctx.shape(name), dtype)
            inputs[name] = name
        for node in graph.nodes:
            if ctx.try_fold(node):
                continue
            table[node.op](ctx, node)
        if integer:
            outputs = build_outputs(ctx, self.integer_io)
        else:
            outputs = {}
            for public, value in graph.outputs.items():
                tensor = ctx.quantized(value) if self.integer_io else ctx.float_in(value)
                outputs[public] = ctx.b.tensors[tensor].name
        recipe = graph.metadata.get("recipe", {})
        description = f"qexport {__version__}; recipe {recipe.get('name', 'fp32') if isinstance(recipe, dict) else recipe}"
        return ctx.b.finish(inputs, outputs, description)

    def lower(self, graph: Graph, path: Path, seq_len: int | None = None) -> dict[str, Any]:
        data = self.build(graph, seq_len)
        write_bytes(Path(path), data)
        facts = inspect_ops(data)
        seq = int(seq_len or graph.metadata.get("capture", {}).get("seq_len", 128))
        result: dict[str, Any] = {
            "input_shape": [1, seq],
            "io": "integer" if self.integer_io else "float",
            "ops": facts,
        }
        if self.integer_io:  # what a caller needs to read the integer outputs
            from qexport.backends.tflite.context import quant_of

            result["outputs"] = {}
            for public, value in graph.outputs.items():
                dtype, params = quant_of(graph.quant[value])
                result["outputs"][public] = {
                    "dtype": dtype,
                    "scale": float(params.scale),
                    "zero_point": int(params.zero_point),
                }
        slow = float_speed_linears(graph)
        if slow:
            result["notes"] = [
                note(
                    f"tflite: {slow} Linears run as float FULLY_CONNECTED (fp32 speed); "
                    "dynamic is the fast TFLite recipe",
                    "TFLite's int8 FULLY_CONNECTED must write int8, and this recipe keeps Linear outputs "
                    "float, so the int8 weights are multiplied in float. --recipe int8-full or dynamic "
                    "give integer FCs (docs/backend-tflite.md)",
                )
            ]
        return result

    def interpreter(self, path: Path, *, threads: int = 2, **kwargs: Any) -> Any:
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=threads, **kwargs)
        interp.allocate_tensors()
        return interp

    def run(self, path: Path, inputs: dict[str, Any], *, interpreter: Any = None) -> dict[str, Any]:
        """Run sample by sample (the file has batch 1); outputs stacked along axis 0. Integer
        outputs (``--integer-io``) are dequantized with their params, to compare with floats."""
        interp = interpreter or self.interpreter(path)
        runner = interp.get_signature_runner("serving_default")
        details = runner.get_input_details()
        output_params = {k: d["quantization"] for k, d in runner.get_output_details().items()}
        arrays = {k: np.asarray(v) for k, v in inputs.items() if k in details}
        batch = len(next(iter(arrays.values())))
        results: dict[str, list[np.ndarray]] = {}
        for i in range(batch):
            feed = {}
            for name, detail in sorted(details.items()):
                x = arrays[name][i : i + 1]
                want = tuple(int(d) for d in detail["shape"])
                if tuple(x.shape) != want:
                    raise QExportError(
                        f"tflite model expects {name} of shape {want}, got {tuple(x.shape)}; "
                        "evaluate at the --seq-len it was converted with"
                    )
                feed[name] = x.astype(detail["dtype"])
            for key, value in runner(**feed).items():
                array = np.array(value)
                scale, zero = output_params.get(key, (0.0, 0))
                if array.dtype.kind == "i" and scale:
                    array = ((array.astype(np.int64) - zero) * np.float32(scale)).astype(np.float32)
                results.setdefault(key, []).append(array)
        return {k: np.concatenate(v, axis=0) for k, v in results.items()}

    def run_intermediates(self, path: Path, inputs: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """Tensors named like IR values, read back with all tensors preserved: float ones as
        they are, integer ones (full-integer files) dequantized with their params."""
        interp = self.interpreter(path, experimental_preserve_all_tensors=True)
        by_name = {d["name"]: d for d in interp.get_tensor_details()}

        def readable(detail: dict[str, Any]) -> bool:
            integer = detail["dtype"] in (np.int8, np.int16) and detail["quantization"][0] != 0
            return bool(detail["dtype"] == np.float32 or integer)

        wanted = [n for n in names if n in by_name and readable(by_name[n])]
        collected: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
        runner_inputs = {d["name"]: d for d in interp.get_input_details()}
        batch = len(next(iter(inputs.values())))
        for i in range(batch):
            for name, detail in runner_inputs.items():
                interp.set_tensor(
                    detail["index"], np.asarray(inputs[name])[i : i + 1].astype(detail["dtype"])
                )
            interp.invoke()
            for n in wanted:
                array = np.array(interp.get_tensor(by_name[n]["index"]))
                scale, zero = by_name[n]["quantization"]
                if array.dtype != np.float32:
                    array = ((array.astype(np.int64) - zero) * np.float32(scale)).astype(np.float32)
                collected[n].append(array)
        return {n: np.concatenate(v, axis=0) for n, v in collected.items()}


def inspect_ops(data: bytes | memoryview) -> dict[str, int]:
    """Operator name -> count in a .tflite flatbuffer (read with the schema, no runtime)."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(data, 0)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    counts: Counter[str] = Counter()
    for sg in model.subgraphs:
        for op in sg.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            counts[names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")] += 1
    return dict(sorted(counts.items()))


def float_speed_linears(graph: Graph) -> int:
    """``STATIC`` Linears with a float output: TFLite's int8 FC must write int8, so the lowering
    runs them as float FCs (see linear.lower_linear)."""
    return sum(
        1
        for node in graph.nodes
        if node.op is Op.LINEAR
        and classify(graph, node).form is LinearForm.STATIC
        and node.outputs[0] not in graph.quant
    )


def _check_full_integer(graph: Graph) -> None:
    """Integer I/O needs every op between input and output to run on integers."""
    blockers = Counter(
        node.op.value
        for node in graph.nodes
        if node.op not in (Op.GATHER, Op.CAST, Op.RESHAPE, Op.SQUEEZE, Op.UNSQUEEZE, Op.SLICE)
        and not all(o in graph.quant for o in node.outputs)
    )
    unquantized_outputs = [name for name, v in graph.outputs.items() if v not in graph.quant]
    if blockers or unquantized_outputs:
        ops = ", ".join(f"{op} x{n}" for op, n in blockers.most_common())
        raise QExportError(
            "tflite --integer-io needs a fully quantized graph, but these ops compute in float: "
            f"{ops or 'none'}; outputs without a quant spec: {', '.join(unquantized_outputs) or 'none'}. "
            "Drop --integer-io (float I/O keeps these islands in float)"
        )
