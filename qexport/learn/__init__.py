"""Learned quantization (``--learn``): params chosen against the float model on the
calibration data, inside the IR's arithmetic; the result is an IR of the same recipe.

Two steps (docs/learning.md):
1. static recipes: distillation learns the smoothing scales and activation ranges
   (``qexport.learn.fit``, torch autograd over the IR's ops);
2. every recipe with int8 Linear weights: GPTQ rounds them (``qexport.quant.gptq``, numpy).

This stage imports torch (for gradients); the IR, the engine and the reference stay numpy-only.
"""

from __future__ import annotations

from collections.abc import Callable

from qexport.errors import QExportError
from qexport.ir.graph import Graph
from qexport.quant.calibration import CalibrationSet
from qexport.quant.recipe import Recipe

Progress = Callable[[str, int, int], None]


def learn(
    float_graph: Graph,
    quantized: Graph,
    recipe: Recipe,
    calib: CalibrationSet | None,
    progress: Progress | None = None,
) -> Graph:
    """``quantized`` (made from ``float_graph`` by ``recipe``) with learned params."""
    from qexport.quant.gptq import learn_rounding

    if calib is None:
        raise QExportError(f"recipe {recipe.name!r} with learn = true needs calibration data")
    facts: dict[str, object] = {"seed": recipe.learn_seed, "samples": calib.size}
    graph = quantized
    if recipe.scheme == "static" and recipe.learn_epochs:
        from qexport.learn.fit import learn_static

        graph, losses = learn_static(
            float_graph,
            quantized,
            calib,
            epochs=recipe.learn_epochs,
            seed=recipe.learn_seed,
            progress=(lambda i, n: progress("distillation epoch", i, n)) if progress else None,
        )
        facts.update(epochs=recipe.learn_epochs, **losses)
    graph = learn_rounding(
        float_graph,
        graph,
        calib,
        progress=(lambda i, n: progress("GPTQ rounding, Linear", i, n)) if progress else None,
    )
    facts["methods"] = (["smoothing and ranges by distillation"] if "epochs" in facts else []) + [
        "GPTQ weight rounding"
    ]
    graph.metadata["learned"] = facts
    return graph
