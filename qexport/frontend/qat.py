"""Eager-mode QAT state_dicts, kept with their own params (docs/capture.md).

``model.qconfig = get_default_qat_qconfig("fbgemm")``, ``prepare_qat(model)``, training, then
``torch.save(model.state_dict())``: each Linear keeps its float weight plus a
``weight_fake_quant`` (int8 scales per output channel, symmetric), and every module torch.ao
observes (Linear, LayerNorm, Embedding, Tanh...) an ``activation_post_process`` FakeQuantize on
its output (scale, zero point, and the observer's running min/max). Nothing else: the inputs of
a Linear are quantized only where the module before it was.

``read_qat`` parses those buffers. The quant range (``quant_min``/``quant_max``) is not stored;
it is recovered from the observer's min/max, which the stored scale was computed from, and a
range that matches no PyTorch qconfig is refused. ``QatSource.apply`` puts the params on the
captured float IR: weight integers exactly as the fake-quant computes them, a static spec on
each observed output. What no backend can run exactly is re-quantized, and its measured cost
noted, unless ``strict`` (``--strict-params``) asks for a one-line refusal instead:

- 7-bit activations (``reduce_range``, [0, 127], fbgemm's default) cross in 8 bits with the
  same scale and zero point: equal wherever the QAT model does not clip at its top.
- weight integers at -128 become -127, the symmetric int8 range TFLite requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qexport.errors import SourceError
from qexport.ir.graph import Graph, QDType, QuantSpec, copy_graph
from qexport.ir.ops import Op

RECIPE = "torch-qat"
FAKE_QUANTS = (".weight_fake_quant", ".activation_post_process")
# (quant_min, quant_max) of the qconfigs PyTorch ships, and the IR type holding each
ACTIVATION_RANGES = {(0, 127): QDType.UINT7, (0, 255): QDType.UINT8, (-128, 127): QDType.INT8}


@dataclass(frozen=True)
class FakeQuant:
    """One FakeQuantize module as stored."""

    scale: np.ndarray  # float32, () or (channels,)
    zero_point: np.ndarray  # int32, same shape
    qmin: int
    qmax: int
    enabled: bool


@dataclass
class QatSource:
    """A QAT state_dict's params by module path, and the state to rebuild its torch model."""

    weights: dict[str, FakeQuant]
    activations: dict[str, FakeQuant]
    state: dict[str, Any] = field(repr=False)
    strict: bool = False
    label: str = "torch.ao eager QAT"

    def apply(self, graph: Graph) -> Graph:
        return apply_qat(graph, self)

    def requantization_note(
        self, graph: Graph, quantized: Graph, seq_len: int, tokenizer_dir: Path | None
    ) -> str | None:
        return requantization_note(graph, quantized, self, seq_len, tokenizer_dir)

    def reference(self, float_module: Any) -> Any:
        return torch_qat_module(float_module, self)

    def note(self) -> str:
        return (
            f"torch.ao eager QAT source: {len(self.weights)} Linear weights and "
            f"{len(self.activations)} observed outputs keep their trained params (recipe {RECIPE})"
        )


def is_qat_state(state: dict[str, Any]) -> bool:
    return any(_fake_quant_of(key) is not None for key in state)


def _fake_quant_of(key: str) -> tuple[str, str] | None:
    """(module path, fake-quant prefix) of a key inside a FakeQuantize, else None."""
    hits = [(key.find(f"{kind}."), kind) for kind in FAKE_QUANTS if f"{kind}." in key]
    if not hits:
        return None
    index, kind = min(hits)
    return key[:index], key[: index + len(kind)]


def read_qat(state: dict[str, Any], where: Path) -> tuple[dict[str, Any], QatSource]:
    """(the float state_dict, the params) of an eager QAT state_dict."""
    floats: dict[str, Any] = {}
    prefixes: dict[str, str] = {}
    for key, value in state.items():
        found = _fake_quant_of(key)
        if found is None:
            floats[key] = value
        else:
            prefixes[found[1]] = found[0]
    weights, activations = {}, {}
    for prefix, module in sorted(prefixes.items()):
        if prefix.endswith(".weight_fake_quant"):
            weights[module] = _weight_fake_quant(state, prefix, where)
        else:
            activations[module] = _activation_fake_quant(state, prefix, where)
    return floats, QatSource(weights, activations, state)


def _buffers(state: dict[str, Any], prefix: str, where: Path) -> dict[str, np.ndarray]:
    names = ("scale", "zero_point", "activation_post_process.min_val", "activation_post_process.max_val")
    missing = [n for n in names if f"{prefix}.{n}" not in state]
    if missing:
        if f"{prefix}.min_val" in state:
            raise SourceError(
                f"{where}: {prefix!r} is an observer without a FakeQuantize: a calibrated (prepare) "
                "model that was never converted nor trained; pass its float state_dict, qexport calibrates"
            )
        raise SourceError(f"{where}: {prefix!r} lacks {missing[0]!r}; not a torch.ao FakeQuantize")
    out = {n.rpartition(".")[2]: state[f"{prefix}.{n}"].detach().numpy() for n in names}
    enabled = state.get(f"{prefix}.fake_quant_enabled")
    out["enabled"] = np.array(1 if enabled is None else int(enabled.reshape(-1)[0]))
    if out["enabled"] and (out["min_val"].size == 0 or not np.all(np.isfinite(out["min_val"]))):
        raise SourceError(
            f"{where}: {prefix!r} never observed a value (min_val is inf): the model was not "
            "trained or calibrated after prepare_qat"
        )
    return out


def _weight_fake_quant(state: dict[str, Any], prefix: str, where: Path) -> FakeQuant:
    b = _buffers(state, prefix, where)
    scale, zero = b["scale"].astype(np.float32), b["zero_point"].astype(np.int32)
    if np.any(zero != 0):
        raise SourceError(
            f"{where}: {prefix!r} quantizes weights asymmetrically (zero point {int(zero.reshape(-1)[0])}); "
            "the integer kernels qexport writes take symmetric weights"
        )
    low, high = np.minimum(b["min_val"], 0).reshape(-1), np.maximum(b["max_val"], 0).reshape(-1)
    # [-128, 127]: FakeQuantize scales by max|w| / 127.5, the fused one by max(-min/128, max/127)
    candidates = (np.maximum(-low, high) / 127.5, np.maximum(-low / 128, high / 127))
    live = (high - low) > 1e-6
    flat = scale.reshape(-1)
    if not any(np.allclose(flat[live], c[live], rtol=1e-3) for c in candidates):
        raise SourceError(
            f"{where}: {prefix!r} has weight scales that match no int8 qconfig qexport reads "
            "(symmetric, quant range [-128, 127])"
        )
    if scale.size == 1:
        scale, zero = scale.reshape(()), zero.reshape(())
    return FakeQuant(scale, zero, -128, 127, bool(b["enabled"]))


def _activation_fake_quant(state: dict[str, Any], prefix: str, where: Path) -> FakeQuant:
    if f"{prefix}.activation_post_process.scale" in state:  # FixedQParamsFakeQuantize (tanh, sigmoid)
        return _fixed_fake_quant(state, prefix)
    b = _buffers(state, prefix, where)
    if b["scale"].size != 1:
        raise SourceError(
            f"{where}: {prefix!r} quantizes an activation per channel; qexport reads per-tensor ones"
        )
    scale, zero = np.float32(b["scale"].reshape(())), int(b["zero_point"].reshape(()))
    low, high = min(float(b["min_val"]), 0.0), max(float(b["max_val"]), 0.0)
    qmin = zero + int(np.rint(low / scale))  # affine params: zero_point = qmin - round(min / scale)
    qmax = qmin + int(np.rint((high - low) / scale))
    if (qmin, qmax) not in ACTIVATION_RANGES and b["enabled"]:
        raise SourceError(
            f"{where}: {prefix!r} has params for the range [{qmin}, {qmax}], which matches no "
            "per-tensor affine qconfig qexport reads ([0, 127], [0, 255] or [-128, 127])"
        )
    return FakeQuant(np.array(scale, np.float32), np.array(zero, np.int32), qmin, qmax, bool(b["enabled"]))


def _fixed_fake_quant(state: dict[str, Any], prefix: str) -> FakeQuant:
    """torch.ao's fixed params for outputs in [-1, 1] or [0, 1]: (2/256, 128) and (1/256, 0) are
    quint8 [0, 255]; their qint8 twins have zero points 0 (tanh) and -128 (sigmoid)."""
    scale = np.float32(state[f"{prefix}.scale"].reshape(()).item())
    zero = int(state[f"{prefix}.zero_point"].reshape(()).item())
    quint8 = zero == 128 or (zero == 0 and scale == np.float32(1 / 256))
    qmin, qmax = (0, 255) if quint8 else (-128, 127)
    enabled = state.get(f"{prefix}.fake_quant_enabled")
    on = enabled is None or bool(int(enabled.reshape(-1)[0]))
    return FakeQuant(np.array(scale, np.float32), np.array(zero, np.int32), qmin, qmax, on)


def weight_integers(weight: np.ndarray, fq: FakeQuant) -> np.ndarray:
    """The integers PyTorch's fake-quant rounds ``weight`` to (``x * (1/scale)``, half to even)."""
    import torch

    w = torch.from_numpy(np.ascontiguousarray(weight, np.float32))
    if fq.scale.ndim:
        fake = torch.fake_quantize_per_channel_affine(
            w, torch.from_numpy(fq.scale), torch.from_numpy(fq.zero_point), 0, fq.qmin, fq.qmax
        )
        scale = fq.scale[:, None]
    else:
        fake = torch.fake_quantize_per_tensor_affine(w, float(fq.scale), 0, fq.qmin, fq.qmax)
        scale = fq.scale
    return np.rint(fake.numpy() / scale).astype(np.int8)


def apply_qat(graph: Graph, source: QatSource, exact: bool = False) -> Graph:
    """The captured float ``graph`` with the QAT model's params (see the module docstring).
    ``exact`` keeps 7-bit activations and -128 weights as they are: the IR of what PyTorch
    computes, which the reference runs but no backend lowers (to measure the re-quantization)."""
    from qexport.quant.engine import integer_bias
    from qexport.quant.recipe import BUILTIN, to_dict

    out = copy_graph(graph)
    out.metadata["recipe"] = {**to_dict(BUILTIN["fp32"]), "name": RECIPE, "source": source.label}
    nodes = {n.name: n for n in out.nodes}
    changes = {"7-bit activations widened to 8 bits": [], "weights at -128 set to -127": []}
    for module, fq in source.activations.items():
        if not fq.enabled:
            continue
        node = nodes.get(module)
        if node is None:
            raise SourceError(f"the observed output of {module!r} has no single node in the captured graph")
        dtype = ACTIVATION_RANGES[(fq.qmin, fq.qmax)]
        zero = fq.zero_point
        if dtype is QDType.UINT7 and not exact:
            _require_lossy(source, module, "a 7-bit (reduce_range) activation")
            changes["7-bit activations widened to 8 bits"].append(module)
            dtype, zero = QDType.INT8, (zero - 128).astype(np.int32)  # same values, wider top
        elif dtype is QDType.UINT8:
            dtype, zero = QDType.INT8, (zero - 128).astype(np.int32)  # the same tensor, shifted
        out.quant[node.outputs[0]] = QuantSpec(dtype, fq.scale, zero)
    for module, fq in source.weights.items():
        node = nodes.get(module)
        if node is None or node.op is not Op.LINEAR:
            raise SourceError(f"fake-quantized weight of {module!r} has no Linear node in the captured graph")
        if not fq.enabled:
            continue
        w = node.inputs[1]
        integers = weight_integers(out.constants[w], fq)
        if (integers == -128).any() and not exact:
            _require_lossy(source, module, "an int8 weight at -128")
            changes["weights at -128 set to -127"].append(module)
            integers = np.maximum(integers, -127).astype(np.int8)
        out.constants[w] = integers
        channels = integers.shape[0]  # a per-tensor scale is stored per row: the same values
        w_scale = np.ascontiguousarray(np.broadcast_to(fq.scale, (channels,)), np.float32)
        out.quant[w] = QuantSpec(QDType.INT8, w_scale, np.zeros(channels, np.int32), axis=0)
        x_spec = out.quant.get(node.inputs[0])
        if len(node.inputs) > 2 and x_spec is not None:
            # int32 at s_x·s_w, as the integer kernels add it (TFLite's int8 FULLY_CONNECTED takes
            # no other); the fake-quant model adds it in float, a rounding apart (docs/capture.md)
            bias = node.inputs[2]
            out.constants[bias], out.quant[bias] = integer_bias(out.constants[bias], x_spec, out.quant[w])
    out.metadata["recipe"]["requantized"] = {k: v for k, v in changes.items() if v}
    out.validate()
    return out


def requantization_note(
    graph: Graph, lossy: Graph, source: QatSource, seq_len: int, tokenizer_dir: Path | None
) -> str | None:
    """One line saying what was re-quantized and what it costs: the reference run of ``lossy``
    (``apply_qat`` of the float ``graph``) against the exact one (PyTorch's params as they are) on 8 samples of the built-in sentences
    (random token ids without a tokenizer), SQNR per output."""
    from qexport.parity.bisect import sqnr_db
    from qexport.quant.calibration import random_tokens
    from qexport.reference.executor import run

    changed = lossy.metadata["recipe"]["requantized"]
    if not changed:
        return None
    exact = apply_qat(graph, source, exact=True)
    if tokenizer_dir is not None:
        from qexport.frontend.text import read_lines, tokenize
        from qexport.quant.calibration import FALLBACK_TEXT

        inputs = tokenize(read_lines(FALLBACK_TEXT)[:8], tokenizer_dir, seq_len, list(graph.inputs))
        data = "8 built-in sentences"
    else:
        inputs, data = random_tokens(graph, seq_len, samples=8), "8 random token sequences"
    ours, ref = run(lossy, inputs), run(exact, inputs)
    mask = inputs.get("attention_mask")
    cost = ", ".join(f"{k} {sqnr_db(ours[k], ref[k], mask):.1f} dB" for k in graph.outputs)
    what = "; ".join(f"{len(v)} {k}" for k, v in changed.items())
    return f"re-quantized for the backends: {what}; measured against PyTorch's exact params on {data}: {cost}"


def _require_lossy(source: QatSource, module: str, what: str) -> None:
    if source.strict:
        raise SourceError(
            f"{module!r} holds {what}, which no backend keeps exactly; drop --strict-params to "
            "re-quantize it (its measured cost goes into the manifest's notes)"
        )


def torch_qat_module(float_module: Any, source: QatSource) -> Any:
    """The QAT model as PyTorch runs it in eval mode, observers off: ``prepare_qat`` of the float
    architecture with qconfigs of the ranges read, then the stored state, strictly."""
    import copy

    import torch
    from torch.ao import quantization as tq

    model = copy.deepcopy(float_module).train()
    for name, sub in model.named_modules():
        act, weight = source.activations.get(name), source.weights.get(name)
        if act is not None or weight is not None:
            sub.qconfig = tq.QConfig(activation=_fq_factory(act), weight=_fq_factory(weight, weight=True))
    with torch.no_grad():
        tq.prepare_qat(model, inplace=True)
    model.load_state_dict(source.state, strict=True)
    model.apply(tq.disable_observer)
    return model.eval()


def _fq_factory(fq: FakeQuant | None, weight: bool = False) -> Any:
    import torch
    from torch.ao import quantization as tq

    if fq is None:  # the module is observed on one side only
        return tq.default_weight_fake_quant if weight else tq.NoopObserver
    if weight:
        per_channel = bool(fq.scale.ndim)
        observer = tq.MovingAveragePerChannelMinMaxObserver if per_channel else tq.MovingAverageMinMaxObserver
        qscheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
        dtype = torch.qint8
    else:
        observer, qscheme = tq.MovingAverageMinMaxObserver, torch.per_tensor_affine
        dtype = torch.quint8 if fq.qmin >= 0 else torch.qint8
    return tq.FusedMovingAvgObsFakeQuantize.with_args(
        observer=observer, quant_min=fq.qmin, quant_max=fq.qmax, dtype=dtype, qscheme=qscheme
    )
