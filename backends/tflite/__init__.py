"""TFLite / LiteRT backend: a flatbuffer of built-in ops carrying the IR's exact integers.

See docs/backend-tflite.md for how each IR op is lowered and which kernels run it.
"""

from qexport.backends.tflite.backend import TfliteBackend

__all__ = ["TfliteBackend"]
