"""Rebuild a transformers module from a torch.export program or a TorchScript archive.

A program a user exported from a Hugging Face model is the model *as traced*: static shapes,
fused ``scaled_dot_product_attention`` with a boolean mask built by advanced indexing, and
the all-masked-row fix-ups around it. Those are not IR ops, and the IR should not grow them.
What the file does carry is everything needed to rebuild the module qexport captures best:
the class it was traced from (``transformers.models.bert.modeling_bert.BertModel``, recorded
by torch in the program's module stack and in TorchScript's type names) and its weights under
their module paths. The architecture's sizes follow from the weights; the one size they do not
fix, the number of attention heads, is chosen by trying the divisors of the hidden size.

The rebuilt module is accepted only if it computes what the file computes: it runs beside the
file's own graph on padded example inputs, and every output must agree to 1e-4 (relative to
the output's scale). Otherwise one line says so and asks for ``--config``. Only classes that
ship with transformers are ever instantiated; nothing from the file runs as Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from qexport.errors import SourceError

TOLERANCE = 1e-4


def traced_class(qualified: str) -> type | None:
    """``[__torch__.]transformers.models.X.modeling_X.Cls`` -> transformers.Cls, else None."""
    import transformers

    name = qualified.removeprefix("__torch__.")
    if not name.startswith("transformers.models."):
        return None
    cls = getattr(transformers, name.rsplit(".", 1)[-1], None)
    return cls if isinstance(cls, type) and hasattr(cls, "config_class") else None


def program_class(program: Any) -> str | None:
    """The root module's class path that torch.export recorded in the nodes' module stacks."""
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for path, cls in stack.values():
            if path == "":
                return str(cls)
    return None


def _layer_count(keys: list[str]) -> int:
    return len({m.group(1) for k in keys if (m := re.search(r"\.layer\.(\d+)\.", k))})


def _find(state: dict[str, Any], suffix: str) -> Any:
    return next((v for k, v in state.items() if k.endswith(suffix)), None)


def infer_config(cls: type, state: dict[str, Any]) -> Any:
    """A config of ``cls``'s family sized by the weights (heads left at the default)."""
    config = cls.config_class()  # type: ignore[attr-defined]
    words = _find(state, "embeddings.word_embeddings.weight")
    if words is None:
        raise SourceError(f"no embeddings.word_embeddings.weight among {len(state)} weights")
    sizes: dict[str, Any] = {"vocab_size": words.shape[0], "hidden_size": words.shape[1]}
    project = _find(state, "embeddings_project.weight")
    if project is not None:  # ELECTRA: embeddings narrower than the encoder
        sizes.update(embedding_size=words.shape[1], hidden_size=project.shape[0])
    for suffix, key in (
        ("embeddings.position_embeddings.weight", "max_position_embeddings"),
        ("embeddings.token_type_embeddings.weight", "type_vocab_size"),
        ("layer.0.intermediate.dense.weight", "intermediate_size"),
        ("classifier.weight", "num_labels"),
    ):
        tensor = _find(state, suffix)
        if tensor is not None:
            sizes[key] = tensor.shape[0]
    sizes["num_hidden_layers"] = _layer_count(list(state))
    for key, value in sizes.items():
        setattr(config, key, int(value))
    if "num_labels" in sizes:
        config.id2label = {i: f"LABEL_{i}" for i in range(int(sizes["num_labels"]))}
        config.label2id = {v: k for k, v in config.id2label.items()}
    return config


def head_candidates(hidden: int) -> list[int]:
    """Divisors of ``hidden``, the usual head widths (64, then 32, 128, ...) first."""
    divisors = [h for h in range(1, hidden + 1) if hidden % h == 0]
    return sorted(divisors, key=lambda h: (abs((hidden // h) - 64), hidden // h))


def rebuild(
    cls: type,
    state: dict[str, Any],
    config: Any,
    reference: Callable[[dict[str, Any]], list[Any]],
    inputs: dict[str, Any],
    where: str,
) -> Any:
    """The transformers module of ``cls`` that reproduces ``reference`` on ``inputs``."""
    import torch

    from qexport.frontend.source import load_state_dict_into, model_from_config

    given = config is not None
    config = config if given else infer_config(cls, state)
    config.architectures = [cls.__name__]
    config.return_dict = True
    has_pooler = any(k.startswith("pooler.") or ".pooler." in k for k in state)
    with torch.no_grad():
        expected = [t.detach() for t in reference(inputs)]
    heads = [config.num_attention_heads] if given else head_candidates(config.hidden_size)
    worst = float("inf")
    for count in heads[:16]:
        config.num_attention_heads = count
        model = model_from_config(config, where, add_pooling_layer=has_pooler).eval()
        load_state_dict_into(model, state, where)
        with torch.no_grad():
            out = model(**inputs)
        got = [v for v in out.values() if isinstance(v, torch.Tensor)]
        if len(got) == len(expected) and all(g.shape == e.shape for g, e in zip(got, expected, strict=True)):
            error = max(
                float((g - e).abs().max() / max(float(e.abs().max()), 1e-6))
                for g, e in zip(got, expected, strict=True)
            )
            if error <= TOLERANCE:
                return model
            worst = min(worst, error)
    found = f"closest relative error {worst:.2g}" if worst < float("inf") else "outputs of another shape"
    hint = "check that --config belongs to these weights" if given else "pass its config.json with --config"
    raise SourceError(
        f"{where}: rebuilt {cls.__name__} from the file's weights, but it does not compute what the "
        f"file computes ({found}); {hint}"
    )
