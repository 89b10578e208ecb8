"""How a .pt2's integer Linears multiply, and which choice suits the CPU converting.

No torch import here: the CLI checks ``--torch-gemm`` by these names before anything is loaded.
"""

from __future__ import annotations

from qexport.backends.cpu import cpu_flags, is_x86
from qexport.errors import QExportError

GEMMS = ("int8", "float")
"""How integer Linears multiply: ``torch._int_mm`` on int8, or a float32 matmul of the integers."""
GEMM_CHOICES = ("auto", *GEMMS)  # auto: int8 where this CPU has VNNI or AMX, else float
_INT_MM_FLAGS = ("avx512_vnni", "amx_int8")


def int_mm_is_fast() -> bool:
    """Whether ``torch._int_mm`` has a fast int8 kernel on this CPU.

    torch 2.13 runs it on oneDNN's int8 GEMM on x86 CPUs with AVX-512 VNNI (measured on a VNNI
    Xeon and an AMX Sapphire Rapids: 3.7-5.4x a float32 matmul); on an AVX2-only EPYC it is a
    scalar loop, ~50x *slower* than the float32 matmul of the same shape (oneDNN never called).
    Elsewhere (AVX-VNNI without AVX-512, ARM) it is unmeasured, so the safe answer is no.
    """
    flags = cpu_flags() if is_x86() else None
    return flags is not None and any(flag in flags for flag in _INT_MM_FLAGS)


def resolve_gemm(choice: str) -> str:
    """``auto`` -> ``int8`` where ``torch._int_mm`` is fast on this CPU, else ``float``."""
    if choice not in GEMM_CHOICES:
        raise QExportError(f"torch gemm must be one of {', '.join(GEMM_CHOICES)}; got {choice!r}")
    if choice != "auto":
        return choice
    return "int8" if int_mm_is_fast() else "float"
