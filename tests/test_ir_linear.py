"""The IR's one Linear classification, and the package boundaries around it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from qexport.ir.graph import Graph, Node, QDType, QuantSpec, ValueInfo
from qexport.ir.linear import LinearForm, classify
from qexport.ir.ops import Op

ROOT = Path(__file__).resolve().parents[1]


def _spec(
    dtype: QDType, *, axis: int | None = None, dynamic: bool = False, symmetric: bool = True
) -> QuantSpec:
    if axis is None or dynamic:
        return QuantSpec(dtype, np.array(0.1, np.float32), np.array(0, np.int32), axis, dynamic, symmetric)
    return QuantSpec(dtype, np.full(4, 0.1, np.float32), np.zeros(4, np.int32), axis)


def _linear(x_spec: QuantSpec | None, w_spec: QuantSpec | None) -> tuple[Graph, Node]:
    node = Node("fc", Op.LINEAR, ["x", "w"], ["y"])
    graph = Graph(
        inputs={"x": ValueInfo("float32", (2, 3))},
        outputs={"y": "y"},
        nodes=[node],
        constants={"w": np.zeros((4, 3), np.int8 if w_spec is not None else np.float32)},
        values={"y": ValueInfo("float32", (2, 4))},
    )
    for name, spec in (("x", x_spec), ("w", w_spec)):
        if spec is not None:
            graph.quant[name] = spec
    return graph, node


INT8_W = _spec(QDType.INT8, axis=0)
CASES = [
    ("float weight", None, None, LinearForm.FLOAT),
    ("weight-only", None, INT8_W, LinearForm.FAKE_QUANT),
    ("static uint8 input", _spec(QDType.UINT8), INT8_W, LinearForm.STATIC),
    ("static int16 input", _spec(QDType.INT16), INT8_W, LinearForm.STATIC),
    ("per-tensor weight", _spec(QDType.INT8), _spec(QDType.INT8), LinearForm.STATIC),
    (
        "asymmetric run-time input",
        _spec(QDType.INT8, axis=-1, dynamic=True, symmetric=False),
        INT8_W,
        LinearForm.STEPS,
    ),
    ("symmetric run-time input", _spec(QDType.INT8, axis=-1, dynamic=True), INT8_W, LinearForm.FAKE_QUANT),
    ("per-channel input", _spec(QDType.UINT8, axis=1), INT8_W, LinearForm.FAKE_QUANT),
]


@pytest.mark.parametrize(("case", "x_spec", "w_spec", "form"), CASES, ids=[c[0] for c in CASES])
def test_classify(case, x_spec, w_spec, form):
    graph, node = _linear(x_spec, w_spec)
    assert classify(graph, node).form is form


def test_backends_take_their_integer_linears_from_the_classification():
    from qexport.backends.onnx.linears import qgemm_linear, steps_linear

    for _, x_spec, w_spec, form in CASES:
        graph, node = _linear(x_spec, w_spec)
        eight_bit = x_spec is not None and x_spec.dtype in (QDType.UINT8, QDType.INT8)
        assert qgemm_linear(graph, node) == (form is LinearForm.STATIC and eight_bit)
        assert steps_linear(graph, node) == (form is LinearForm.STEPS)


def _imports(path: Path) -> set[str]:
    """Top-level qexport subpackages a module imports (at any depth: lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "qexport" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_the_core_packages_import_each_other_without_a_cycle():
    """ir <- reference <- quant <- parity: arithmetic is IR semantics, so nothing in the IR, and
    nothing the reference needs, imports the quantization engine."""
    core = ("ir", "reference", "quant")
    edges = {
        pkg: set().union(*(_imports(p) for p in (ROOT / "qexport" / pkg).glob("*.py"))) - {pkg}
        for pkg in core
    }
    assert not edges["ir"] & set(core), edges["ir"]
    assert "quant" not in edges["reference"], edges["reference"]
