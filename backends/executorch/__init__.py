"""The ExecuTorch backend: a ``.pte`` program whose quantized Linears run in XNNPACK (phones)."""

from qexport.backends.executorch.backend import ExecutorchBackend

__all__ = ["ExecutorchBackend"]
