"""What this machine's CPU can do for integer kernels, read from /proc/cpuinfo.

Two backends decide on it: onnxruntime's U8S8 kernels saturate on x86 without VNNI
(``backends/onnx/cpu.py``), and ``torch._int_mm`` has no fast kernel there at all
(``backends/torch/backend.py``).
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""Any of these: the CPU has a non-saturating int8 dot-product instruction."""


@cache
def cpuinfo() -> dict[str, str] | None:
    """The first processor's ``key: value`` lines of /proc/cpuinfo, or None where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # one processor is enough: every core reports the same model and flags
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags, or None where /proc/cpuinfo cannot be read."""
    info = cpuinfo()
    return None if info is None else set(info.get("flags", "").split())
