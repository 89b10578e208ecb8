"""The onnxruntime session options qexport runs its ONNX files with, and why.

Speed, every CPU: ``session.set_denormal_as_zero=1``. Softmax over padded keys computes
exp(score + mask) with a huge negative mask; MLAS clamps the argument at its lower range and
lands on float32 denormals, which x86 cores process ~100x slower. On MiniLM at seq 128 with
real (padded) sentences the option made the int8 file 0.72-0.78x and the fp32 file 0.89x of
their default-option latency, with bit-identical outputs (measured 2026-12-03, AMX Xeon).
onnxruntime sets it on its pool threads and, for good, on the thread that creates the session,
which changes numpy's and torch's arithmetic in that thread too (hypothesis refuses to run).
So qexport creates sessions inside ``own_float_state`` (the creating thread gets its state
back) and runs them inside ``flush_denormals`` (the calling thread, which does half the work
with 2 intra-op threads, flushes only while onnxruntime runs).

Fidelity, every CPU: ``session.qdq_matmulnbits_accuracy_level=1``. onnxruntime (1.32) rewrites
DequantizeLinear(int8 weight) -> MatMul with a *float* input (``int8-mixed``'s int16 islands,
``weight-only``, ``--onnx-linears qdq`` with ``dynamic``) into its MatMulNBits kernel, by
default at accuracy level 4: it quantizes the float input to int8 per block at run time, which
the file does not say. MiniLM vs the IR simulation (96 sentences, AVX2 EPYC): ``dynamic`` as
MatMulNBits 30.3 -> 36.2 dB, ``int8-mixed`` 30.6 -> 35.2 dB at level 1 (float), for 19 % and
7 % more latency; ``int8`` files have no MatMulNBits and do not change.

Exactness, x86 without VNNI only:

onnxruntime's U8S8 kernels on x86 CPUs *without* VNNI (AVX2-only: AMD before Zen 4, Intel
before Cascade Lake) add pairs of u8*s8 products in a saturating int16 (``VPMADDUBSW``), which
silently corrupts the IR's integer Linears (22 dB vs the IR, measured on an AVX2 EPYC). The
session option ``session.x64quantprecision=1`` makes onnxruntime convert the int8 weights to
uint8 at load time and use its exact U8U8 kernels. On CPUs with VNNI the U8S8 kernels are exact
and the option is harmful: on an AMX Sapphire Rapids it swaps the AMX U8S8 GEMM for a U8U8 one
(the same bits, MiniLM int8 0.55x -> 1.03x of fp32 latency, measured). So it is set only where
the CPU needs it. See docs/backend-onnx.md, "x86 without VNNI".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import numpy as np

from qexport.backends.cpu import VNNI_FLAGS, cpu_flags, is_x86

EXACT_U8U8 = {"session.x64quantprecision": "1"}
NO_DENORMALS = {"session.set_denormal_as_zero": "1"}
# Float-input Linears on int8 weights (int16 islands, weight-only, symmetric dynamic; asymmetric
# dynamic ones are Gemms of integer steps since 2026-12-04) become MatMulNBits,
# whose default accuracy level 4 re-quantizes the float input to int8 per block; 1 keeps it float.
FLOAT_MATMULNBITS = {"session.qdq_matmulnbits_accuracy_level": "1"}


@cache
def int8_dot_saturates() -> bool:
    """True on x86 CPUs whose u8*s8 dot products saturate (no VNNI); False elsewhere.

    Reads /proc/cpuinfo on Linux; on another x86 OS, where flags cannot be read here, it
    assumes the worst (exact and slower beats fast and wrong)."""
    if not is_x86():
        return False
    flags = cpu_flags()
    return flags is None or not any(flag in flags for flag in VNNI_FLAGS)


def exact_session_config() -> dict[str, str]:
    """The session config entries that keep onnxruntime's integer Linears exact on this CPU."""
    return dict(EXACT_U8U8) if int8_dot_saturates() else {}


def session_config() -> dict[str, str]:
    """Every session config entry qexport sets: no denormals, float MatMulNBits, plus exact U8U8
    where needed."""
    return {**NO_DENORMALS, **FLOAT_MATMULNBITS, **exact_session_config()}


def flushing_denormals() -> bool:
    """Whether this thread flushes denormals now (FTZ or DAZ set)."""
    return float(np.float32(1e-39) * np.float32(1.0)) == 0.0


@contextmanager
def own_float_state() -> Iterator[None]:
    """This thread's denormal mode as it was before the block, whatever the block set."""
    import torch  # sets and clears FTZ + DAZ together on x86 and ARM

    before = flushing_denormals()
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


@contextmanager
def flush_denormals() -> Iterator[None]:
    """FTZ + DAZ on this thread for the block only."""
    import torch

    with own_float_state():
        torch.set_flush_denormal(True)
        yield
