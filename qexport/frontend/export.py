"""Run ``torch.export`` on a loaded model with the shapes and inputs the IR expects.

Two choices live here (see docs/capture.md):
- Attention is exported *eager* (matmul + softmax), never fused SDPA, so the IR holds
  primitive ops every backend has.
- The padding mask is turned into the classic additive float mask in a thin wrapper
  ``(1 - mask[:, None, None, :]) * float32.min`` and handed to the model as a 4-D mask,
  which transformers uses as-is. That replaces transformers' mask-building code (advanced
  indexing, boolean algebra) with four ops.
"""

from __future__ import annotations

import inspect
import re
import warnings
from dataclasses import dataclass
from typing import Any

from qexport.errors import CaptureError, UsageError, first_line
from qexport.frontend.source import LoadedSource

STANDARD_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MIN_DYNAMIC_SEQ = 3  # MobileBERT's trigram embedding guards seq - 1 != 1


@dataclass
class Exported:
    program: Any  # torch.export.ExportedProgram
    input_names: list[str]
    output_names: list[str]
    dynamic: bool
    module: Any  # the wrapper nn.Module (fp32 reference), None for .pt2 sources
    max_seq: int | None


def example_inputs(input_names: list[str], batch: int, seq: int, vocab: int) -> dict[str, Any]:
    """Deterministic, valid example inputs: ids in [1, vocab), full mask, zero token types."""
    import torch

    gen = torch.Generator().manual_seed(0)
    result: dict[str, Any] = {}
    for name in input_names:
        if name == "input_ids":
            result[name] = torch.randint(1, max(2, vocab), (batch, seq), generator=gen)
        elif name == "attention_mask":
            result[name] = torch.ones(batch, seq, dtype=torch.long)
        else:
            result[name] = torch.zeros(batch, seq, dtype=torch.long)
    return result


def _model_inputs(module: Any) -> list[str]:
    params = inspect.signature(module.forward).parameters
    names = [n for n in STANDARD_INPUTS if n in params]
    if "input_ids" not in names:
        raise CaptureError(
            f"{type(module).__name__}.forward takes no input_ids; qexport captures "
            "token-id models (BERT family) — export it yourself to .pt2"
        )
    return names


def make_wrapper(module: Any, input_names: list[str], output_names: list[str]) -> Any:
    """nn.Module taking the standard inputs and returning a tuple of named outputs."""
    import torch

    class Exportable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):  # type: ignore[no-untyped-def]
            kwargs = {"input_ids": input_ids}
            if attention_mask is not None:
                keep = attention_mask[:, None, None, :].to(torch.float32)
                kwargs["attention_mask"] = (1.0 - keep) * torch.finfo(torch.float32).min
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            out = self.model(**kwargs)
            return tuple(out[name] for name in output_names)

    return Exportable().eval()


def export_module(source: LoadedSource, seq_len: int) -> Exported:
    """torch.export with dynamic batch and sequence dims (static if the model refuses)."""
    import torch

    if source.kind == "torchscript" and isinstance(source.module, torch.jit.ScriptModule):
        source.program = _torchscript_program(source, seq_len)  # not a transformers class: as traced
    if source.program is not None:
        return _program_exported(source.program)

    module = source.module
    config = getattr(module, "config", None)
    max_seq = getattr(config, "max_position_embeddings", None)
    if max_seq is not None and seq_len > max_seq:
        raise UsageError(
            f"--seq-len {seq_len} exceeds the model's max_position_embeddings ({max_seq}); "
            f"use --seq-len {max_seq} or less"
        )
    if seq_len < 1:
        raise UsageError(f"--seq-len must be at least 1, got {seq_len}")
    vocab = getattr(config, "vocab_size", 2)
    input_names = _model_inputs(module)
    with torch.no_grad():
        probe = module(**example_inputs(input_names, 1, max(seq_len, MIN_DYNAMIC_SEQ), vocab))
    if hasattr(probe, "keys"):
        output_names = [k for k in probe.keys() if isinstance(probe[k], torch.Tensor)]
    else:
        raise CaptureError(f"{type(module).__name__} does not return named outputs (a ModelOutput)")
    wrapper = make_wrapper(module, input_names, output_names)

    upper = max_seq or 4096
    example_seq = max(min(seq_len, upper), MIN_DYNAMIC_SEQ) if upper >= MIN_DYNAMIC_SEQ else seq_len
    example = example_inputs(input_names, 2, example_seq, vocab)
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    seq_dim = torch.export.Dim("seq", min=MIN_DYNAMIC_SEQ, max=upper)
    dynamic_shapes = {n: {0: batch_dim, 1: seq_dim} for n in input_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(wrapper, (), example, dynamic_shapes=dynamic_shapes)
            dynamic = True
        except Exception as exc:  # torch raises many types; fall back to the captured shapes
            source.notes.append(f"dynamic-shape export failed ({first_line(exc)}); captured static shapes")
            try:
                static = example_inputs(input_names, 1, seq_len, vocab)
                program = torch.export.export(wrapper, (), static)
                dynamic = False
            except Exception as exc2:
                raise CaptureError(
                    f"torch.export failed for {type(module).__name__}: {type(exc2).__name__}: "
                    f"{str(exc2).splitlines()[0][:300] if str(exc2) else ''}"
                ) from None
    return Exported(program, input_names, output_names, dynamic, wrapper, max_seq)


def _public_name(arg: str) -> str:
    """``input_ids_1`` (TorchScript's debug names) -> ``input_ids``; other names unchanged."""
    base = re.sub(r"_\d+$", "", arg)
    return base if base in STANDARD_INPUTS else arg


def _program_exported(program: Any) -> Exported:
    """A user's export program as it is: its own shapes, inputs and outputs."""
    import torch

    args = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    names = [_public_name(a) for a in args]
    outs = [f"output_{i}" for i, _ in enumerate(program.graph_signature.output_specs)]
    if len(outs) == 1:
        outs = ["output"]
    for spec in program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT" and not isinstance(
            spec.arg, torch.export.graph_signature.TensorArgument
        ):
            raise CaptureError(
                f"the program takes a non-tensor input {spec.arg.name!r}; export it with tensor inputs only"
            )
    return Exported(program, names, outs, dynamic=False, module=None, max_seq=None)


def token_input_names(names: list[str], where: str) -> list[str]:
    """``names`` when they are token inputs qexport captures (input_ids and optional ones)."""
    if "input_ids" not in names or any(n not in STANDARD_INPUTS for n in names):
        raise CaptureError(
            f"{where}: the model takes {names}; qexport captures token-id models whose inputs are "
            f"among {list(STANDARD_INPUTS)}"
        )
    return names


def embedding_rows(named_tensors: Any) -> int:
    """Rows of the word-embedding table among ``(name, tensor)`` pairs (2 when there is none)."""
    return next((int(t.shape[0]) for n, t in named_tensors if n.endswith("word_embeddings.weight")), 2)


def padded_example_inputs(input_names: list[str], batch: int, seq: int, vocab: int) -> dict[str, Any]:
    """``example_inputs`` with the last row's final quarter padded, so that the mask matters."""
    result = example_inputs(input_names, batch, seq, vocab)
    if "attention_mask" in result:
        result["attention_mask"][-1, max(1, seq - seq // 4) :] = 0
    return result


def _torchscript_program(source: LoadedSource, seq_len: int) -> Any:
    """torch's TorchScript -> export converter, on example token inputs of the captured shape."""
    from torch._export.converter import TS2EPConverter

    module = source.module
    args = [i.debugName().split(".")[0] for i in list(module.graph.inputs())[1:]]
    token_input_names(args, str(source.path))
    vocab = embedding_rows(module.named_parameters())
    example = example_inputs(args, 2, max(seq_len, MIN_DYNAMIC_SEQ), vocab)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return TS2EPConverter(module, tuple(example[a] for a in args)).convert()
        except Exception as exc:  # the converter raises many types for graphs it cannot express
            raise CaptureError(
                f"{source.path}: torch cannot convert this TorchScript graph to an export program "
                f"({first_line(exc)}); pass the model as a Hugging Face directory, a state_dict with "
                "--config, or a torch.export program instead"
            ) from None
