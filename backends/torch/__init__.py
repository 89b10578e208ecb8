"""PyTorch backend: a torch.export program (.pt2) with int8 weights and integer matmuls.

See docs/backend-torch.md for why this representation.
"""

from qexport.backends.torch.backend import TorchBackend

__all__ = ["TorchBackend"]
