"""Quantization: integer arithmetic shared by the IR simulation and every backend."""
