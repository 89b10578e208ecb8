"""The torch backend's program compiled ahead of time by AOTInductor (``--to torch-aoti``).

The same ``torch.export`` program as ``model.pt2`` (the same IR module, integers and GEMM
choice), compiled by ``torch._inductor.aoti_compile_and_package`` into ``model.aoti.pt2``: one
shared library with the weights inside, loaded with plain torch
(``torch._inductor.aoti_load_package``). Inductor fuses the ~450 small elementwise ops of the
rescale/quantize chains into a few loops, which is where the exported program spends its time
on CPUs (docs/backend-torch.md, "AOTInductor package"). It needs a C++ compiler where it is
converted, and the library is built for the converting CPU's instruction set (``-march=native``):
deploy it on the same kind of CPU.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from qexport.atomic import write_bytes
from qexport.backends.torch.backend import TorchBackend, _gemm_note
from qexport.errors import QExportError
from qexport.ir.graph import Graph
from qexport.report.notes import note

COMPILERS = ("g++", "c++", "clang++")
_COMPILE_CMD = b"\n// Compile cmd"  # inductor appends its command lines (machine paths) on some runs


def compiler() -> str | None:
    """The C++ compiler AOTInductor would use, or None (inductor calls ``g++``/``c++`` by name,
    or ``$CXX``)."""
    import os

    named = os.environ.get("CXX")
    for name in (named, *COMPILERS) if named else COMPILERS:
        found = shutil.which(name)
        if found:
            return found
    return None


class AotiBackend(TorchBackend):
    """``model.aoti.pt2``: the torch backend's program, compiled by AOTInductor for this CPU."""

    name = "torch-aoti"
    suffix = ".aoti.pt2"

    def check(self, graph: Graph) -> None:
        super().check(graph)
        if compiler() is None:
            raise QExportError(
                "torch-aoti backend needs a C++ compiler on PATH (g++ or clang++, or $CXX); "
                "install one (e.g. apt install g++) or write the portable program with --to torch"
            )

    def lower(self, graph: Graph, path: Path) -> dict[str, Any]:
        import torch
        from torch._inductor import aoti_compile_and_package
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        program, gemm, integer = self.export(graph)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            package = Path(tmp) / "model.pt2"  # the archive's folder is named after the file
            try:
                aoti_compile_and_package(program, package_path=str(package))
            except Exception as exc:  # compiler and inductor errors come in many types
                raise QExportError(
                    f"torch-aoti backend: AOTInductor failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
                ) from None
            data = deterministic(package.read_bytes())
        write_bytes(Path(path), data)
        isa = str(pick_vec_isa()) or "scalar"
        facts: dict[str, Any] = {
            "torch_version": torch.__version__.split("+")[0],
            "gemm": gemm,
            "isa": isa,
            "notes": [
                note(
                    f"torch-aoti: model.aoti.pt2 is compiled for this CPU ({isa}); run it on the same kind of CPU",
                    "AOTInductor builds the library with -march=native: a CPU without these instruction "
                    "sets cannot load it. model.pt2 (--to torch) runs anywhere (docs/backend-torch.md)",
                )
            ],
        }
        if integer:
            facts["notes"].append(_gemm_note(gemm, self.gemm))
        return facts

    def load(self, path: Path) -> Any:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch._inductor.aoti_load_package(str(path))


def deterministic(package: bytes) -> bytes:
    """The package with what varies between two compiles of one program taken out: inductor's
    random ``serialization_id`` (replaced by a hash of the contents) and the compile command
    comment it appends to its C++ sources on some runs. The shared library itself is the same
    bytes every time (measured), so the same IR gives the same file."""
    source = zipfile.ZipFile(io.BytesIO(package))
    members = []
    for info in source.infolist():
        data = source.read(info.filename)
        if info.filename.endswith(".cpp") and _COMPILE_CMD in data:
            data = data[: data.index(_COMPILE_CMD)] + b"\n"
        members.append((info, data))
    digest = hashlib.sha256(b"".join(d for i, d in members if not i.filename.endswith("serialization_id")))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for info, data in members:
            if info.filename.endswith("serialization_id"):
                data = str(int(digest.hexdigest(), 16))[:40].encode()
            archive.writestr(info, data)
    return out.getvalue()
