"""Learned quantization (``--learn``): params chosen against the float model on the
calibration data, inside the IR's arithmetic; the result is an IR of the same recipe.

Three steps (docs/learning.md):
1. static recipes with ``learn_epochs``: distillation learns the smoothing scales and activation
   ranges (``qexport.learn.fit``, torch autograd over the IR's ops; experimental, off by default);
2. every recipe with int8 Linear weights: GPTQ rounds them (``qexport.quant.gptq``, numpy);
3. static and full-integer recipes: each encoder layer in turn is fitted to the float layer's output (its weight
   integers, biases and activation ranges; ``qexport.learn.blocks``).

This stage imports torch (for gradients); the IR, the engine and the reference stay numpy-only.
"""

from __future__ import annotations

from collections.abc import Callable

from qexport.errors import QExportError
from qexport.ir.graph import Graph
from qexport.quant.calibration import CalibrationSet
from qexport.quant.recipe import Recipe

Progress = Callable[[str, int, int], None]
# The recipe's calibration (smoothing, ranges) and GPTQ see the first 128 samples of a learning
# set; the layer step sees all. Min-max ranges only widen with more text: MiniLM int8 on 3219
# sentences 23.8 dB (GPTQ 25.4) against 24.2 (25.8) on 128, and GPTQ on 3219 took 157 s, not 15.
RANGE_SAMPLES = 128


def for_ranges(calib: CalibrationSet | None) -> CalibrationSet | None:
    """What the recipe's calibration observes when the recipe learns (``RANGE_SAMPLES``)."""
    return calib.head(RANGE_SAMPLES) if calib is not None else None


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
        calib.head(RANGE_SAMPLES),
        progress=(lambda i, n: progress("GPTQ rounding, Linear", i, n)) if progress else None,
    )
    methods = (["smoothing and ranges by distillation"] if "epochs" in facts else []) + [
        "GPTQ weight rounding"
    ]
    if recipe.scheme in ("static", "integer") and recipe.learn_layer_epochs:
        from qexport.learn.blocks import reconstruct_layers

        graph, report = reconstruct_layers(
            float_graph,
            graph,
            calib,
            epochs=recipe.learn_layer_epochs,
            seed=recipe.learn_seed,
            progress=(lambda i, n: progress("layer reconstruction, layer", i, n)) if progress else None,
        )
        if report["layers"]:
            methods.append("layer reconstruction")
            facts.update(layer_epochs=recipe.learn_layer_epochs, **report)
    facts["methods"] = methods
    graph.metadata["learned"] = facts
    return graph
