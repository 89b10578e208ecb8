"""Backend registry: each deployable target implements :class:`Backend` and is found by name.

Built-in backends are listed in ``BUILTIN``; third parties register under the entry-point
group ``qexport.backends``. Nothing is imported until a backend is asked for.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from qexport.errors import UsageError
from qexport.ir.graph import Graph

BUILTIN: dict[str, str] = {
    "onnx": "qexport.backends.onnx:OnnxBackend",
    "torch": "qexport.backends.torch:TorchBackend",
    "tflite": "qexport.backends.tflite:TfliteBackend",
}
"""name -> "module:attribute" of the built-in backends (filled as backends land)."""


class Backend(Protocol):
    """What every target implements."""

    name: str
    suffix: str  # artifact file suffix, e.g. ".onnx"

    def check(self, graph: Graph) -> None:
        """Raise QExportError naming any node this backend cannot lower (before writing)."""

    def lower(self, graph: Graph, path: Path) -> dict[str, Any]:
        """Write the artifact to ``path``; return backend facts for the manifest."""

    def run(self, path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run the artifact with its real runtime; outputs keyed by the graph's output names."""


def _specs() -> dict[str, str]:
    specs = dict(BUILTIN)
    for ep in entry_points(group="qexport.backends"):
        specs.setdefault(ep.name, ep.value)
    return specs


def available() -> list[str]:
    """Names of the backends this installation knows."""
    return sorted(_specs())


def get(name: str) -> Backend:
    """Instantiate a backend by name, or raise a UsageError listing the available ones."""
    specs = _specs()
    if name not in specs:
        have = ", ".join(sorted(specs)) or "none yet (this build writes model.qir only)"
        raise UsageError(f"unknown backend {name!r} in --to; available: {have}")
    module_name, _, attr = specs[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"backend {name!r} needs a package that is not installed ({exc.name}); "
            f"install it with: pip install 'qexport[{name}]'"
        ) from None
    backend: Backend = getattr(module, attr)()
    return backend
