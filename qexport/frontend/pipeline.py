"""capture = load the source, torch.export it, translate to IR, stamp provenance metadata."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qexport.errors import UsageError
from qexport.frontend.export import Exported, export_module
from qexport.frontend.pt2e import Pt2eSource, finish, float_graph, requantization_cost
from qexport.frontend.source import LoadedSource, load_source
from qexport.frontend.translate import translate
from qexport.ir.fold_score_scale import fold_score_scale
from qexport.ir.graph import Graph
from qexport.ir.inputs import defaults_for


@dataclass
class Captured:
    graph: Graph
    source: LoadedSource
    exported: Exported
    # A source PyTorch already quantized (quantize_dynamic, QAT): the IR with its own params, which
    # every target is lowered from instead of a recipe (frontend/quantized.py).
    quantized: Graph | None = None

    @property
    def reference_module(self) -> Any:
        """The fp32 torch module taking the graph's inputs (None for .pt2 sources; for a pt2e
        program, the program without its activation quantize/dequantize pairs)."""
        if isinstance(self.source.quantized, Pt2eSource):
            return self.source.quantized.float_module()
        return self.exported.module


def capture_source(
    src: str | Path,
    *,
    seq_len: int = 128,
    config: str | Path | None = None,
    trust_pickle: bool = False,
    strict_params: bool = False,
) -> Captured:
    """``strict_params``: a quantized source whose params a backend cannot keep exactly is refused
    instead of re-quantized (frontend/qat.py)."""
    from qexport import __version__

    source = load_source(src, config=config, trust_pickle=trust_pickle)
    if source.quantized is not None and hasattr(source.quantized, "strict"):
        source.quantized.strict = strict_params
    exported = export_module(source, seq_len)
    prefix = "model." if exported.module is not None else ""
    graph = translate(exported.program, exported.input_names, exported.output_names, prefix=prefix)
    translated = None
    if graph.quant:  # a pt2e program: its own quantization, read by the translation
        source.quantized = Pt2eSource(exported.program, strict=strict_params)
        static = [d for info in graph.inputs.values() for d in info.shape[1:2] if isinstance(d, int)]
        if static and static[0] != seq_len:
            raise UsageError(
                f"{src}: the program was exported for sequences of {static[0]} tokens; "
                f"pass --seq-len {static[0]}"
            )
        translated, graph = graph, float_graph(graph)
    # 1/sqrt(d) into the query weights: one op fewer per layer; not into int8 weights kept as stored
    folded = 0 if source.quantized else fold_score_scale(graph)
    graph.metadata.update(
        {
            "qexport_version": __version__,
            "source": {"kind": source.kind, "name": source.path.name, "sha256": source.sha256},
            "architecture": type(source.module).__name__ if source.module is not None else "ExportedProgram",
            "capture": {"seq_len": seq_len, "dynamic_shapes": exported.dynamic, "max_seq": exported.max_seq},
            "notes": [*graph.metadata.get("notes", []), *source.notes],
            "input_defaults": defaults_for(exported.input_names) if exported.module is not None else {},
            "passes": {"fold_score_scale": folded},
        }
    )
    quantized = None
    if translated is not None:
        translated.metadata.update(copy.deepcopy(graph.metadata))
        quantized = finish(translated, source.quantized)
        quantized.metadata["notes"].append(source.quantized.note(quantized))
        note = requantization_cost(quantized, translated, seq_len)
        if note:
            quantized.metadata["notes"].append(note)
    elif source.quantized is not None:
        quantized = source.quantized.apply(graph)
        note = source.quantized.requantization_note(graph, quantized, seq_len, source.tokenizer_dir)
        if note:
            quantized.metadata["notes"].append(note)
    return Captured(graph, source, exported, quantized)
