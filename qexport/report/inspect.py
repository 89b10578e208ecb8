"""``qexport inspect``: a readable summary of a .qir graph."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qexport.ir.graph import Graph


def _fmt_shape(shape: tuple[int | str, ...]) -> str:
    return escape("[" + ", ".join(str(d) for d in shape) + "]")


def render(graph: Graph, path: Path, console: Console) -> None:
    meta = graph.metadata
    size = sum(a.nbytes for a in graph.constants.values())
    console.print(
        f"[bold]{path}[/]  qir v1 · {meta.get('architecture', '?')} · recipe {meta.get('recipe', '?')}"
        f" · {len(graph.nodes)} nodes · {len(graph.constants)} constants ({size / 2**20:.1f} MiB)"
        f" · {len(graph.quant)} quantized tensors"
    )
    src = meta.get("source", {})
    if src:
        console.print(f"source: {src.get('kind')} {src.get('name')} sha256 {str(src.get('sha256'))[:16]}…")
    for name, info in graph.inputs.items():
        console.print(f"input  {name}: {info.dtype}{_fmt_shape(info.shape)}")
    for name, value in graph.outputs.items():
        info = graph.values[value]
        console.print(f"output {name}: {info.dtype}{_fmt_shape(info.shape)}  (= {value})")
    ops = Counter(n.op.value for n in graph.nodes)
    console.print("ops: " + ", ".join(f"{op}×{n}" for op, n in sorted(ops.items())))
    table = Table("node", "op", "inputs", "output", "quant", box=None, pad_edge=False)
    for column in table.columns:
        column.overflow = "fold"
    for node in graph.nodes:
        info = graph.values[node.outputs[0]]
        spec = graph.quant.get(node.outputs[0])
        quant = ""
        if spec is not None:
            quant = f"{spec.dtype.value} " + (
                "dynamic"
                if spec.dynamic
                else f"s={float(spec.scale.flat[0]):.4g} zp={int(spec.zero_point.flat[0])}"
                + (f" ×{spec.scale.size} ax{spec.axis}" if spec.axis is not None else "")
            )
        args = ", ".join(_describe_input(graph, i) for i in node.inputs if i)
        table.add_row(
            escape(node.name), node.op.value, escape(args), f"{info.dtype}{_fmt_shape(info.shape)}", quant
        )
    console.print(table)
    rows = meta.get("sensitivity") or []
    if rows:
        console.print("sensitivity (output SQNR with only this activation group quantized; lowest first):")
        for row in sorted(rows, key=lambda r: r["sqnr_db"]):
            console.print(
                f"  {row['sqnr_db']:6.2f} dB  {escape(row['input'])}" + ("  [int16]" if row["int16"] else "")
            )


def _describe_input(graph: Graph, name: str) -> str:
    if name in graph.constants:
        array = graph.constants[name]
        spec = graph.quant.get(name)
        tag = f"{spec.dtype.value}" if spec else str(array.dtype)
        return f"{name}:{tag}{list(array.shape)}" if array.ndim else f"{array.item():.6g}"
    return name
