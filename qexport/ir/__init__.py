"""The backend-neutral IR: graph types, op set, quant specs and the ``.qir`` file format.

Framework-free: numpy only (no torch / tensorflow / onnx imports, enforced by ruff).
"""

from qexport.ir.graph import Graph, Node, QDType, QuantSpec, ValueInfo
from qexport.ir.ops import Op
from qexport.ir.serde import load, save

__all__ = ["Graph", "Node", "Op", "QDType", "QuantSpec", "ValueInfo", "load", "save"]
