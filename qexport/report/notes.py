"""Conversion notes: one short line for the console, the reasons in the manifest.

A note is ``{"text": ..., "detail": ..., "cpu": ...}``. ``text`` is what the console prints
(one line); ``detail`` stays in manifest.json with a pointer to the docs; ``cpu`` names the
CPUs a note is about ("x86-without-vnni"), and the console prints such a note only there.
"""

from __future__ import annotations

from typing import Any

WITHOUT_VNNI = "x86-without-vnni"


def note(text: str, detail: str = "", cpu: str | None = None) -> dict[str, Any]:
    return {"text": text, "detail": detail, "cpu": cpu}


def as_note(value: str | dict[str, Any]) -> dict[str, Any]:
    """Notes written as plain strings (calibration warnings, source notes) become text-only notes."""
    return note(value) if isinstance(value, str) else {**note(""), **value}


def applies_here(entry: dict[str, Any]) -> bool:
    """Whether a note concerns the CPU this process runs on."""
    if entry.get("cpu") != WITHOUT_VNNI:
        return True
    from qexport.backends.cpu import VNNI_FLAGS, cpu_flags, is_x86

    flags = cpu_flags()
    return is_x86() and flags is not None and not any(f in flags for f in VNNI_FLAGS)
