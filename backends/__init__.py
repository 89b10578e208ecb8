"""Backend registry: each deployable target implements :class:`Backend` and is found by name.

Built-in backends are listed in ``BUILTIN``; third parties register under the entry-point
group ``qexport.backends``. Nothing is imported until a backend is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, MutableMapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, TypeVar

from qexport.errors import LoweringError, QExportError, UsageError
from qexport.ir.graph import Graph
from qexport.ir.ops import Op

BUILTIN: dict[str, str] = {
    "onnx": "qexport.backends.onnx:OnnxBackend",
    "torch": "qexport.backends.torch:TorchBackend",
    "torch-aoti": "qexport.backends.torch.aoti:AotiBackend",
    "tflite": "qexport.backends.tflite:TfliteBackend",
    "executorch": "qexport.backends.executorch:ExecutorchBackend",
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


F = TypeVar("F", bound=Callable[..., Any])


def registrar(table: MutableMapping[Op, F]) -> Callable[..., Callable[[F], F]]:
    """The ``@lowers(Op.X, ...)`` decorator that files a lowering function under its ops."""

    def lowers(*ops: Op) -> Callable[[F], F]:
        def register(fn: F) -> F:
            for op in ops:
                table[op] = fn
            return fn

        return register

    return lowers


def check_lowerable(
    graph: Graph, backend: str, supported: Collection[Op], *, constant_weights: bool = True
) -> None:
    """Raise before anything is written when a node has no lowering (naming the op, the node
    and what the backend supports) or a Linear's weight is not a constant."""
    for node in graph.nodes:
        if node.op not in supported:
            raise LoweringError(backend, node.op.value, node.name, sorted(op.value for op in supported))
        if constant_weights and node.op is Op.LINEAR and node.inputs[1] not in graph.constants:
            raise QExportError(f"{backend} backend: Linear {node.name!r} needs a constant weight")


def _specs() -> dict[str, str]:
    specs = dict(BUILTIN)
    for ep in entry_points(group="qexport.backends"):
        specs.setdefault(ep.name, ep.value)
    return specs


ON_REQUEST = frozenset({"executorch", "torch-aoti"})
"""Backends written only when ``--to`` names them: an ExecuTorch program is for phones and its
lowering takes ~30 s on MiniLM; an AOTInductor package needs a C++ compiler, ~30 s of
compiling and is tied to the converting CPU. A plain ``qexport SRC`` pays for neither."""


def available() -> list[str]:
    """Names of the backends this installation knows."""
    return sorted(_specs())


def default_targets() -> list[str]:
    """What ``qexport SRC`` writes without ``--to``: every backend but those ``ON_REQUEST``."""
    return [name for name in available() if name not in ON_REQUEST]


def get(name: str, **options: Any) -> Backend:
    """Instantiate a backend by name with its typed constructor ``options`` (e.g. ``gemm`` for
    torch), or raise a UsageError listing the available ones."""
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
    backend: Backend = getattr(module, attr)(**options)
    return backend
