"""Recipes: typed, validated descriptions of how to quantize (see docs/quantization.md).

A recipe is a frozen dataclass; files (TOML or JSON) are parsed into one with unknown keys and
impossible combinations rejected. Built-in recipes are named in ``BUILTIN``.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from qexport.errors import QExportError

SCHEMES = ("none", "static", "dynamic", "weight-only", "integer")
WEIGHT_DTYPES = ("int8",)  # int4 (block-wise) is not implemented yet
ACTIVATION_DTYPES = ("uint8", "int8", "int16", "uint7")
OBSERVERS = ("minmax", "percentile", "mse")
RULE_ACTIONS = ("float", "int16")
LINEAR_OUTPUTS = ("float", "int8")
LEARNABLE_SCHEMES = ("static", "dynamic", "weight-only", "integer")


class RecipeError(QExportError):
    """A recipe is malformed or asks for something no backend can do."""


@dataclass(frozen=True)
class LayerRule:
    """Linear layers whose node name matches ``match`` (a regex): ``float`` keeps them float,
    ``int16`` gives their input int16 activations (an island for outlier-heavy tensors)."""

    match: str
    action: str = "float"

    def __post_init__(self) -> None:
        if self.action not in RULE_ACTIONS:
            raise RecipeError(f"rule action {self.action!r} unknown; known: {', '.join(RULE_ACTIONS)}")
        try:
            re.compile(self.match)
        except re.error as exc:
            raise RecipeError(f"rule regex {self.match!r} is invalid ({exc})") from None


@dataclass(frozen=True)
class Recipe:
    """How to quantize a captured graph.

    - ``scheme``: none (fp32) | static (calibrated activations) | dynamic (activations
      quantized at run time, per token) | weight-only | integer (full-integer, for NPUs:
      every value between ops crosses in ``activation_dtype``, int8 or int16; docs/integer.md).
    - Weights of Linear layers: per-channel symmetric ``weight_dtype`` (int4 needs
      ``weight_block_size``, a multiple of 2 dividing the input dim).
    - Activations feeding Linear layers: ``activation_dtype`` with ranges from ``observer``.
    - ``smooth_alpha``: SmoothQuant-style migration of activation outliers into the weights
      (0 = none, 1 = all); None disables it.
    - ``quantize_embeddings``: int8 per-row embedding tables.
    - ``rules``: Linear layers kept in float (or given int16 inputs) by name.
    - ``quantize_op_inputs``: IR op names (e.g. "LayerNorm", "Softmax") whose float inputs also
      get static min-max specs — for experiments; BERT needs these ops in float.
    - ``sensitive_int16``: this many Linear input groups, the most sensitive as measured on
      the calibration data, get int16 activations (static schemes with 8-bit activations).
    - ``linear_outputs``: "float" (the Linear's result stays float) or "int8" (it also crosses
      in int8), so integer kernels that must write int8 (TFLite's FULLY_CONNECTED) run the
      whole layer; up to ``output_outliers`` (a fraction) of the widest output channels may
      get a second scale when that halves the quantization noise.
    - ``dynamic_symmetric``: dynamic activations with scale max|x|/127 and zero point 0 (True),
      or asymmetric per token by XNNPACK's rule (False, the default: finer, and exactly what
      LiteRT's hybrid FULLY_CONNECTED computes, so the .tflite matches the IR). Dynamic
      ``uint7`` activations are PyTorch's instead (``quantize_dynamic`` on x86: one range per
      tensor, values in [0, 127]; ``torch-dynamic``).
    - ``int8_roles`` (integer scheme, int16 activations): roles of ops that run in int8
      instead (``qexport.quant.full_integer.ROLES``: attention, linear, gelu, residual,
      layer_norm, other); ``auto_int8_db``: also move each further role to int8 while the
      calibration outputs stay at least this SQNR (dB) from float (the sensitivity table).
      ``npu-mixed`` asks 25 dB: 1 dB above the NPU accuracy gate (24 dB on held-out text).
    - ``exact_floats`` (static schemes): the files compute every LayerNorm and GELU whose result
      a quantizer reads with the IR's bits, wherever the runtime can, at a latency cost
      (docs/decisions/0009-float64-layernorm.md): such GELUs are written in the rational form
      (``qexport.ir.gelu_rational``, every runtime), such LayerNorms run in float64 in the ONNX
      file (torch's `.pt2` always does, at no measurable cost; LiteRT has no float64). On for
      ``int8-full``, whose files must follow its integers; ``int8`` keeps the runtimes' fast
      float32 kernels (its files are ≥ 40 dB from the IR without).
    - ``learn``: after calibration, learn the quantization from the calibration data against the
      float model (docs/learning.md): every recipe with int8 Linear weights rounds them by GPTQ.
      The result is an IR of the same recipe with different integers. ``learn_epochs > 0``
      (static recipes, experimental) first learns the smoothing scales and activation ranges by
      distillation (batch order from ``learn_seed``); on MiniLM its files are only ~30 dB from
      their IR, not 40, so it is off by default. ``learn_layer_epochs`` (static and integer
      recipes, default 2; 0 turns it off; the built-in npu-int16 and npu-mixed set 0) then fits each encoder layer in turn to the float layer's output
      (its weight integers, biases and activation ranges; ``qexport.learn.blocks``).
    """

    name: str = "custom"
    scheme: str = "static"
    weight_dtype: str = "int8"
    weight_block_size: int | None = None
    activation_dtype: str = "uint8"
    observer: str = "minmax"
    percentile: float = 99.99
    smooth_alpha: float | None = 0.5
    quantize_embeddings: bool = True
    rules: tuple[LayerRule, ...] = field(default_factory=tuple)
    sensitive_int16: int = 0
    quantize_op_inputs: tuple[str, ...] = ()
    linear_outputs: str = "float"
    output_outliers: float = 1 / 32
    dynamic_symmetric: bool = False
    int8_roles: tuple[str, ...] = ()
    auto_int8_db: float | None = None
    exact_floats: bool = False
    learn: bool = False
    learn_epochs: int = 0
    learn_layer_epochs: int = 2
    learn_seed: int = 0

    def __post_init__(self) -> None:
        _one_of("scheme", self.scheme, SCHEMES)
        _one_of("weight_dtype", self.weight_dtype, WEIGHT_DTYPES)
        _one_of("activation_dtype", self.activation_dtype, ACTIVATION_DTYPES)
        _one_of("observer", self.observer, OBSERVERS)
        if self.weight_dtype == "int4" and self.scheme != "weight-only":
            raise RecipeError("int4 weights are only supported with scheme = 'weight-only'")
        if self.weight_dtype == "int4" and not self.weight_block_size:
            raise RecipeError("int4 weights need weight_block_size (e.g. 32)")
        if self.weight_block_size is not None and (self.weight_block_size < 2 or self.weight_block_size % 2):
            raise RecipeError("weight_block_size must be an even number >= 2")
        if self.scheme == "dynamic" and self.activation_dtype not in ("int8", "uint7"):
            raise RecipeError("dynamic activations are int8 (per token) or uint7 (PyTorch's, per tensor)")
        if self.activation_dtype == "uint7" and self.scheme != "dynamic":
            raise RecipeError("uint7 activations are PyTorch's dynamic ones: scheme = 'dynamic'")
        if self.scheme == "integer" and self.activation_dtype not in ("int8", "int16"):
            raise RecipeError("scheme = 'integer' takes activation_dtype 'int8' or 'int16' (what NPUs run)")
        if self.scheme == "integer" and self.smooth_alpha is not None:
            raise RecipeError("scheme = 'integer' has no smoothing (smooth_alpha must be unset)")
        from qexport.quant.full_integer import ROLES

        unknown_roles = sorted(set(self.int8_roles) - set(ROLES))
        if unknown_roles:
            raise RecipeError(f"int8_roles names unknown roles {unknown_roles}; known: {', '.join(ROLES)}")
        if (self.int8_roles or self.auto_int8_db is not None) and (
            self.scheme != "integer" or self.activation_dtype != "int16"
        ):
            raise RecipeError(
                "int8_roles and auto_int8_db need scheme = 'integer' with activation_dtype = 'int16'"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise RecipeError("percentile must be in (50, 100]")
        from qexport.ir.ops import Op

        unknown_ops = sorted(set(self.quantize_op_inputs) - {op.value for op in Op})
        if unknown_ops:
            raise RecipeError(f"quantize_op_inputs names unknown ops {unknown_ops}")
        if self.quantize_op_inputs and self.scheme != "static":
            raise RecipeError("quantize_op_inputs needs scheme = 'static'")
        _one_of("linear_outputs", self.linear_outputs, LINEAR_OUTPUTS)
        if self.linear_outputs != "float" and (self.scheme != "static" or self.activation_dtype == "int16"):
            raise RecipeError("linear_outputs = 'int8' needs scheme = 'static' with 8-bit activations")
        if self.exact_floats and self.scheme != "static":
            raise RecipeError(
                "exact_floats needs scheme = 'static' (the others compute no float op a quantizer reads, or compute it at run time)"
            )
        if not 0.0 <= self.output_outliers <= 0.5:
            raise RecipeError("output_outliers must be within [0, 0.5]")
        if self.sensitive_int16 < 0:
            raise RecipeError("sensitive_int16 must be >= 0")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise RecipeError("smooth_alpha must be within [0, 1]")
        if self.learn and self.scheme not in LEARNABLE_SCHEMES:
            raise RecipeError(
                f"learn = true applies to the {', '.join(LEARNABLE_SCHEMES)} schemes, not {self.scheme!r} "
                "(nothing is quantized to learn)"
            )
        if not 0 <= self.learn_epochs <= 1000:
            raise RecipeError("learn_epochs must be within [0, 1000]")
        if not 0 <= self.learn_layer_epochs <= 1000:
            raise RecipeError("learn_layer_epochs must be within [0, 1000]")

    @property
    def quantizes_activations(self) -> bool:
        return self.scheme in ("static", "dynamic", "integer")

    @property
    def needs_calibration(self) -> bool:
        """Static ranges or smoothing scales come from data; a dynamic recipe without
        smoothing takes every range at run time."""
        return self.quantizes_activations and not (self.scheme == "dynamic" and self.smooth_alpha is None)

    def keeps_float(self, node_name: str) -> bool:
        return any(r.action == "float" and re.search(r.match, node_name) for r in self.rules)

    def wants_int16(self, node_name: str) -> bool:
        return any(r.action == "int16" and re.search(r.match, node_name) for r in self.rules)


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RecipeError(f"recipe {key} = {value!r} is not supported; choose one of {', '.join(allowed)}")


BUILTIN: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(name="int8", scheme="static", smooth_alpha=0.8),
        Recipe(name="int8-full", scheme="static", smooth_alpha=0.8, linear_outputs="int8", exact_floats=True),
        Recipe(name="int8-mixed", scheme="static", smooth_alpha=0.8, sensitive_int16=3),
        Recipe(name="int16x8", scheme="static", activation_dtype="int16", smooth_alpha=0.5),
        Recipe(name="dynamic", scheme="dynamic", activation_dtype="int8", smooth_alpha=0.5),
        Recipe(
            name="torch-dynamic",
            scheme="dynamic",
            activation_dtype="uint7",
            smooth_alpha=None,
            quantize_embeddings=False,
        ),
        Recipe(name="npu-int8", scheme="integer", activation_dtype="int8", smooth_alpha=None),
        # The layer step is measured on npu-int8 only (docs/learning.md); the int16 NPU recipes
        # learn their weight rounding (GPTQ) until it is measured on them.
        Recipe(
            name="npu-int16",
            scheme="integer",
            activation_dtype="int16",
            smooth_alpha=None,
            learn_layer_epochs=0,
        ),
        Recipe(
            name="npu-mixed",
            scheme="integer",
            activation_dtype="int16",
            smooth_alpha=None,
            auto_int8_db=25.0,
            learn_layer_epochs=0,
        ),
        Recipe(name="weight-only", scheme="weight-only", smooth_alpha=None),
        Recipe(name="fp32", scheme="none", smooth_alpha=None, quantize_embeddings=False),
    )
}


def resolve(recipe: str | Path | Recipe) -> Recipe:
    """A Recipe from a built-in name, a .toml/.json file, or a Recipe."""
    if isinstance(recipe, Recipe):
        return recipe
    if str(recipe) in BUILTIN:
        return BUILTIN[str(recipe)]
    path = Path(recipe)
    if path.suffix.lower() not in (".toml", ".json"):
        raise RecipeError(
            f"unknown recipe {str(recipe)!r}; built-in: {', '.join(BUILTIN)}, or a .toml/.json file"
        )
    try:
        raw = path.read_bytes().decode("utf-8")
        doc = tomllib.loads(raw) if path.suffix.lower() == ".toml" else json.loads(raw)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except (
        OSError,
        UnicodeDecodeError,
        tomllib.TOMLDecodeError,
        json.JSONDecodeError,
        RecursionError,
    ) as exc:
        raise RecipeError(f"{path}: not a valid recipe file ({exc})") from None
    return from_dict(doc, where=str(path))


def from_dict(doc: Any, where: str = "recipe") -> Recipe:
    """Validate a parsed recipe document; ``base`` names a built-in to start from."""
    if not isinstance(doc, dict):
        raise RecipeError(f"{where}: a recipe is a table/object of settings")
    doc = dict(doc)
    base_name = doc.pop("base", "int8")
    if not isinstance(base_name, str) or base_name not in BUILTIN:
        raise RecipeError(f"{where}: base = {base_name!r} is not a built-in recipe ({', '.join(BUILTIN)})")
    known = {f.name: f for f in fields(Recipe)}
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; known keys: {', '.join(sorted(known))}, base")
    types: dict[str, type | tuple[type, ...]] = {
        "name": str,
        "scheme": str,
        "weight_dtype": str,
        "activation_dtype": str,
        "observer": str,
        "percentile": (int, float),
        "smooth_alpha": (int, float, type(None)),
        "weight_block_size": (int, type(None)),
        "quantize_embeddings": bool,
        "rules": list,
        "sensitive_int16": int,
        "quantize_op_inputs": list,
        "linear_outputs": str,
        "output_outliers": (int, float),
        "dynamic_symmetric": bool,
        "exact_floats": bool,
        "int8_roles": list,
        "auto_int8_db": (int, float, type(None)),
        "learn": bool,
        "learn_epochs": int,
        "learn_layer_epochs": int,
        "learn_seed": int,
    }
    for key, value in doc.items():
        if (isinstance(value, bool) and types[key] is not bool) or not isinstance(value, types[key]):
            raise RecipeError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    if "rules" in doc:
        rules = []
        for i, rule in enumerate(doc["rules"]):
            if (
                not isinstance(rule, dict)
                or set(rule) - {"match", "action"}
                or not isinstance(rule.get("match"), str)
            ):
                raise RecipeError(f"{where}: rules[{i}] must be {{match = '<regex>', action = 'float'}}")
            rules.append(LayerRule(rule["match"], rule.get("action", "float")))
        doc["rules"] = tuple(rules)
    if "quantize_op_inputs" in doc:
        if not all(isinstance(x, str) for x in doc["quantize_op_inputs"]):
            raise RecipeError(f"{where}: quantize_op_inputs must be a list of op names")
        doc["quantize_op_inputs"] = tuple(doc["quantize_op_inputs"])
    if "int8_roles" in doc:
        if not all(isinstance(x, str) for x in doc["int8_roles"]):
            raise RecipeError(f"{where}: int8_roles must be a list of role names")
        doc["int8_roles"] = tuple(doc["int8_roles"])
    for key in ("percentile", "smooth_alpha", "output_outliers", "auto_int8_db"):
        if isinstance(doc.get(key), int):
            doc[key] = float(doc[key])
    try:
        return replace(BUILTIN[base_name], **{"name": where, **doc})
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None


def to_dict(recipe: Recipe) -> dict[str, Any]:
    """JSON-able form, recorded in the IR metadata and the manifest."""
    out: dict[str, Any] = {f.name: getattr(recipe, f.name) for f in fields(Recipe)}
    out["rules"] = [{"match": r.match, "action": r.action} for r in recipe.rules]
    out["quantize_op_inputs"] = list(recipe.quantize_op_inputs)
    out["int8_roles"] = list(recipe.int8_roles)
    return out
