"""The ExecuTorch backend: a ``.pte`` program whose quantized Linears run in XNNPACK (phones)."""

import importlib.util

if importlib.util.find_spec("executorch") is None:  # backends.get turns this into an install hint
    raise ImportError("executorch is not installed", name="executorch")

from qexport.backends.executorch.backend import ExecutorchBackend

__all__ = ["ExecutorchBackend"]
