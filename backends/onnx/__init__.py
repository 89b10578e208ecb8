"""ONNX QDQ backend: QuantizeLinear/DequantizeLinear around the IR's exact integers.

See docs/backend-onnx.md for the opset choice and onnxruntime's fused fast paths.
"""

from qexport.backends.onnx.backend import OnnxBackend

__all__ = ["OnnxBackend"]
