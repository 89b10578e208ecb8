"""Recipes are validated data; calibration inputs fail with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import qexport
from qexport.quant.calibration import CalibrationError
from qexport.quant.recipe import BUILTIN, Recipe, RecipeError, from_dict, resolve, to_dict


def test_builtin_recipes():
    assert {"int8", "dynamic", "weight-only", "int16x8", "fp32"} <= set(BUILTIN)
    assert resolve("int8").smooth_alpha == 0.8


def test_recipe_file_with_base_and_rules(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('base = "int8"\nobserver = "mse"\n[[rules]]\nmatch = "pooler"\naction = "float"\n')
    recipe = resolve(path)
    assert (
        recipe.observer == "mse" and recipe.keeps_float("pooler.dense") and not recipe.keeps_float("encoder")
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('colour = "blue"\n', "unknown key"),
        ('activation_dtype = "float8"\n', "not supported"),
        ('weight_dtype = "int4"\n', "not supported"),
        ('scheme = "dynamic"\nactivation_dtype = "uint8"\n', "dynamic activations"),
        ("smooth_alpha = 3\n", "smooth_alpha"),
        ("observer = 5\n", "wrong type"),
        ("this is not toml", "not a valid recipe"),
    ],
)
def test_bad_recipes_are_rejected(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message):
        resolve(path)


@pytest.fixture(scope="module")
def tiny_graph(tiny_model_dirs):
    return qexport.capture(tiny_model_dirs["bert"], seq_len=16)


def test_empty_calibration_file(tiny_graph, tmp_path, minilm_dir):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(CalibrationError, match="no text lines"):
        qexport.quantize(tiny_graph, "int8", tmp_path / "empty.txt", tokenizer=minilm_dir)


def test_non_utf8_calibration_file(tiny_graph, tmp_path, minilm_dir):
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    with pytest.raises(CalibrationError, match="not UTF-8"):
        qexport.quantize(tiny_graph, "int8", tmp_path / "latin1.txt", tokenizer=minilm_dir)


def test_npz_with_wrong_names(tiny_graph, tmp_path):
    np.savez(tmp_path / "c.npz", ids=np.ones((2, 16), np.int64))
    with pytest.raises(CalibrationError, match="the model takes"):
        qexport.quantize(tiny_graph, "int8", tmp_path / "c.npz")


def test_npz_with_wrong_shapes(tiny_graph, tmp_path):
    arrays = {name: np.ones((2, 16, 3), np.int64) for name in tiny_graph.inputs}
    np.savez(tmp_path / "c.npz", **arrays)
    with pytest.raises(CalibrationError, match="expected integer"):
        qexport.quantize(tiny_graph, "int8", tmp_path / "c.npz")


def test_npz_calibration_works(tiny_graph, tmp_path):
    rng = np.random.default_rng(1)
    arrays = {n: np.zeros((4, 16), np.int64) for n in tiny_graph.inputs}
    arrays["input_ids"] = rng.integers(1, 500, (4, 16))
    arrays["attention_mask"] = np.ones((4, 16), np.int64)
    np.savez(tmp_path / "c.npz", **arrays)
    graph = qexport.quantize(tiny_graph, "int8", tmp_path / "c.npz")
    assert graph.metadata["calibration"]["origin"] == "npz:c.npz"


def test_exact_floats_is_for_static_recipes():
    assert resolve("int8-full").exact_floats and not resolve("int8").exact_floats
    fast = from_dict({"base": "int8-full", "exact_floats": False})
    assert not fast.exact_floats and fast.linear_outputs == "int8"
    with pytest.raises(RecipeError, match="exact_floats needs scheme = 'static'"):
        Recipe(scheme="dynamic", activation_dtype="int8", exact_floats=True)


def test_a_recipe_file_may_set_every_field():
    """Each key ``to_dict`` writes reads back (a field missing from ``from_dict``'s type table
    used to raise a KeyError instead of taking the value)."""
    for name, recipe in BUILTIN.items():
        doc = to_dict(recipe)
        assert from_dict({"base": name, **doc}, where=recipe.name) == recipe
