"""``qexport inspect``: a one-screen summary of a .qir graph, or every node with ``--full``.

The summary answers what a reader asks first: what model, which recipe in words, what goes
in and out, how big, which ops, and how each layer is quantized (one row per layer, so a
BERT-base summary is as long as a MiniLM one is wide). ``--full`` lists every node.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qexport.ir.graph import Graph, QuantSpec
from qexport.ir.ops import Op


def _fmt_shape(shape: tuple[int | str, ...]) -> str:
    return escape("[" + ", ".join(str(d) for d in shape) + "]")


def describe_recipe(recipe: Any) -> str:
    """A recipe's metadata as one sentence, not a dict."""
    if not isinstance(recipe, dict):
        return str(recipe or "fp32 (not quantized)")
    scheme = recipe.get("scheme")
    if scheme in (None, "none"):
        return f"{recipe.get('name', 'fp32')}: float, not quantized"
    if recipe.get("source"):  # a model PyTorch quantized: its own weights, PyTorch's input rule
        return (
            f"{recipe.get('name')}: from a {recipe['source']} model, its own int8 weights; inputs "
            "quantized at run time by PyTorch's rule (uint7, per tensor)"
        )
    parts = [f"{recipe.get('weight_dtype', 'int8')} per-channel weights"]
    if scheme == "static":
        parts.append(f"static {recipe.get('activation_dtype')} activations ({recipe.get('observer')} ranges)")
    elif scheme == "dynamic" and recipe.get("activation_dtype") == "uint7":
        parts.append("activations quantized at run time by PyTorch's rule (uint7, per tensor)")
    elif scheme == "dynamic":
        parts.append("activations quantized at run time, per token")
    elif scheme == "integer":
        wide = recipe.get("activation_dtype")
        narrow = recipe.get("int8_roles") or []
        auto = recipe.get("auto_int8_db")
        extra = f" ({', '.join(narrow)} in int8)" if narrow else ""
        extra += f" (roles to int8 while >= {auto} dB)" if auto is not None else ""
        return f"{recipe.get('name')}: full-integer, every value {wide}{extra}; int8 per-channel weights"
    else:
        parts.append("float activations")
    if recipe.get("smooth_alpha"):
        parts.append(f"SmoothQuant α {recipe['smooth_alpha']}")
    if recipe.get("linear_outputs") == "int8":
        parts.append("int8 Linear outputs")
    if recipe.get("sensitive_int16"):
        parts.append(f"{recipe['sensitive_int16']} most sensitive groups int16")
    if recipe.get("quantize_embeddings"):
        parts.append("int8 embeddings")
    return f"{recipe.get('name')}: " + ", ".join(parts)


def _spec_text(spec: QuantSpec | None) -> str:
    if spec is None:
        return "float"
    if spec.dynamic:
        return f"{spec.dtype.value} dynamic"
    if spec.axis is not None:
        return f"{spec.dtype.value} per-channel"
    return f"{spec.dtype.value} s={float(spec.scale.flat[0]):.3g} zp={int(spec.zero_point.flat[0])}"


def layer_of(node_name: str) -> str:
    """``encoder.layer.3.attention.self.query`` -> ``encoder.layer.3``; ``pooler.dense`` -> ``pooler``."""
    match = re.match(r"(.*?\.layers?\.\d+)(\.|$)", node_name)
    if match:
        return match.group(1)
    return node_name.split(".")[0] if "." in node_name else "(top level)"


def render(graph: Graph, path: Path, console: Console, *, full: bool = False) -> None:
    meta = graph.metadata
    weights = sum(a.nbytes for a in graph.constants.values())
    console.print(
        f"[bold]{escape(str(path))}[/] · qir v1 · {meta.get('architecture', '?')} · {len(graph.nodes)} nodes"
        f" · {weights / 2**20:.1f} MiB of constants · {len(graph.quant)} quantized tensors"
    )
    console.print(f"recipe  {escape(describe_recipe(meta.get('recipe')))}")
    src = meta.get("source", {})
    if src:
        console.print(
            f"source  {src.get('kind')} {escape(str(src.get('name')))} sha256 {str(src.get('sha256'))[:16]}…"
        )
    defaults = meta.get("input_defaults", {})
    for name, info in graph.inputs.items():
        default = f"  (optional, default {defaults[name]})" if name in defaults else ""
        console.print(f"input   {name}: {info.dtype}{_fmt_shape(info.shape)}{default}")
    for name, value in graph.outputs.items():
        info = graph.values[value]
        console.print(f"output  {name}: {info.dtype}{_fmt_shape(info.shape)}")
    ops = Counter(n.op.value for n in graph.nodes)
    console.print("ops     " + ", ".join(f"{op}×{n}" for op, n in sorted(ops.items())))
    if full:
        _node_table(graph, console)
    else:
        _layer_table(graph, console)
    rows = meta.get("sensitivity") or []
    if rows:
        shown = sorted(rows, key=lambda r: r["sqnr_db"])[: None if full else 5]
        console.print("sensitivity (output SQNR with only this group quantized; lowest first):")
        for row in shown:
            console.print(
                f"  {row['sqnr_db']:6.2f} dB  {escape(row['input'])}"
                + ("  \\[int16]" if row["int16"] else "")
            )
    if not full:
        console.print("[dim]every node with its inputs and params: qexport inspect FILE --full[/]")


def _layer_table(graph: Graph, console: Console) -> None:
    """One row per layer: its Linears' weights and inputs, its quantized and float values."""
    groups: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for node in graph.nodes:
        row = groups[layer_of(node.name)]
        row["ops"][node.op.value] += 1
        if node.op is Op.LINEAR:
            row["weights"][_spec_text(graph.quant.get(node.inputs[1])).split(" s=")[0]] += 1
            row["linear inputs"][_spec_text(graph.quant.get(node.inputs[0])).split(" s=")[0]] += 1
            row["linear outputs"][_spec_text(graph.quant.get(node.outputs[0])).split(" s=")[0]] += 1
    table = Table(
        "layer", "nodes", "Linear weights", "Linear inputs", "Linear outputs", box=None, pad_edge=False
    )
    for layer, row in groups.items():
        table.add_row(
            escape(layer),
            str(sum(row["ops"].values())),
            *(_counts(row[key]) for key in ("weights", "linear inputs", "linear outputs")),
        )
    console.print(table)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n}× {what}" for what, n in counter.most_common()) or "-"


def _node_table(graph: Graph, console: Console) -> None:
    """One line per node, ``name  Op(inputs) -> type[shape]  quant``; long lines wrap, never fold names."""
    for node in graph.nodes:
        info = graph.values[node.outputs[0]]
        spec = graph.quant.get(node.outputs[0])
        quant = "" if spec is None else "  " + _spec_text(spec)
        if spec is not None and spec.axis is not None and not spec.dynamic:
            quant += f" ×{spec.scale.size} ax{spec.axis}"
        args = ", ".join(_describe_input(graph, i) for i in node.inputs if i)
        console.print(
            f"{escape(node.name)}  {node.op.value}({escape(args)}) -> {info.dtype}{_fmt_shape(info.shape)}{quant}",
            soft_wrap=True,
        )


def _describe_input(graph: Graph, name: str) -> str:
    if name in graph.constants:
        array = graph.constants[name]
        spec = graph.quant.get(name)
        tag = f"{spec.dtype.value}" if spec else str(array.dtype)
        return f"{name}:{tag}{list(array.shape)}" if array.ndim else f"{array.item():.6g}"
    return name
