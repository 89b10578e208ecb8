"""Sequential layer reconstruction (BRECQ-style): each encoder layer in turn is fitted to the
float layer's output.

After GPTQ, the quantized graph is taken one layer (``...layer.N.``) at a time, in order. The
layer reads what the quantized model *really* feeds it (the earlier layers already learned), and
its output is pulled towards the float layer's output on the float input: an energy-normalized
squared error over unpadded tokens, the same as the distillation loss. Learned per layer:
- its int8 weights, as floats rounded straight-through at the IR's row scales (only the integers
  can change; the scales, and so every backend constraint, stay as the recipe made them);
- its Linear biases (written back as int32 at ``s_x · s_w``, the engine's rule);
- the ranges of the static activations the layer makes (step and zero point follow), except
  those fixed by their op (Softmax, Tanh, table lookups); a layout op's output keeps its
  input's range (TFLite requires it).
Smoothing scales stay fixed. Every 8th batch is held out when there are at least 16: a layer
keeps what it learned only if its held-out loss fell, else it keeps its GPTQ params.

Adam, cosine schedule, batches of 8 sorted by length, batch order drawn from the seed: the same
input, recipe and seed give the same IR. See docs/learning.md for what it measures.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np
import torch

from qexport.ir.arith import dequantize
from qexport.ir.graph import Graph, Node, QDType, copy_graph
from qexport.ir.integer_form import LAYOUT_OPS
from qexport.ir.ops import Op
from qexport.learn.fit import BATCH, distill_loss, ordered_by_length
from qexport.learn.graph import LearnableGraph, ste_round
from qexport.quant.calibration import CalibrationSet
from qexport.quant.engine import integer_bias
from qexport.quant.full_integer import FIXED_OUTPUTS
from qexport.quant.gptq import calibration_batches, rounded_linears
from qexport.quant.ranges import activation_spec

Progress = Callable[[int, int], None]
LAYER = re.compile(r"^(.*?\blayers?\.\d+)\.")
# Measured on MiniLM int8, 3219 sentences, 2 epochs (docs/learning.md): the weights start on
# their GPTQ integers and flip only after drifting half a step, so 1e-4 and 1e-3 changed no
# integer at all (27.08 dB either way); 1e-2 flips some: 27.80; 3e-2: 28.03.
LR_WEIGHT = 3e-2
LR_BIAS = 1e-3
# Ranges, for every scheme: 1e-2 (docs/learning.md, "the range rate"). MiniLM, 200 held-out
# sentences: npu-int8 14.08 dB at 1e-3, 15.15 at 1e-2; int8 28.29 at 1e-3, 29.40 at 1e-2
# (3e-4 had given 26.77 against 1e-3's 27.08 before GPTQ).
LR_RANGE = 1e-2
HOLD_OUT_EVERY = 8


def layer_prefixes(graph: Graph) -> list[str]:
    """The graph's repeated layers (``encoder.layer.0``, ...) in execution order."""
    found: list[str] = []
    for node in graph.nodes:
        match = LAYER.match(node.name)
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found


def _layer_of(node: Node) -> str | None:
    match = LAYER.match(node.name)
    return match.group(1) if match else None


class BlockStudent(LearnableGraph):
    """The quantized graph in torch with its weight integers, biases and activation ranges as
    parameters (smoothing fixed). ``parameters_of(prefix)`` are one layer's."""

    def __init__(self, float_graph: Graph, quantized: Graph) -> None:
        super().__init__(float_graph, quantized)
        for parameter in self.smooth.values():
            parameter.requires_grad_(False)
        self.free = torch.nn.ParameterDict()  # weight -> its integers, as floats
        self.biases = torch.nn.ParameterDict()  # bias -> float bias
        self.row_scales: dict[str, torch.Tensor] = {}
        self.owner: dict[str, str | None] = {}  # param name -> layer prefix
        self.linears: dict[str, Node] = {}
        for node in rounded_linears(quantized):
            weight = node.inputs[1]
            spec = quantized.quant[weight]
            self.free[self._key(weight)] = torch.nn.Parameter(
                torch.from_numpy(quantized.constants[weight].astype(np.float32))
            )
            self.row_scales[weight] = torch.from_numpy(spec.scale.astype(np.float32))[:, None]
            self.owner[weight] = _layer_of(node)
            self.linears[weight] = node
            bias = node.inputs[2] if len(node.inputs) > 2 else ""
            if bias and bias in quantized.quant and quantized.quant[bias].dtype is QDType.INT32:
                value = dequantize(quantized.constants[bias], quantized.quant[bias])
                self.biases[self._key(bias)] = torch.nn.Parameter(torch.from_numpy(value))
                self.owner[bias] = _layer_of(node)
        producers = quantized.producer()
        self.frozen: set[str] = set()  # ranges fixed by their op: Softmax, Tanh, table lookups
        for node in quantized.nodes:
            out, first = node.outputs[0], node.inputs[0] if node.inputs else ""
            if out not in self.range_dtypes:
                continue
            if node.op in LAYOUT_OPS and first in self.range_dtypes and _same(quantized, out, first):
                self._keys[out] = self._keys[first]  # a layout op keeps its input's params (TFLite)
            elif node.op in FIXED_OUTPUTS or (node.op is Op.GATHER and first in quantized.constants):
                self.frozen.add(out)
        for name in self.range_dtypes:
            producer = producers.get(name)
            self.owner[name] = _layer_of(producer) if producer is not None else None

    def parameters_of(self, prefix: str) -> dict[str, list[torch.nn.Parameter]]:
        groups: dict[str, list[torch.nn.Parameter]] = {"weights": [], "biases": [], "ranges": []}
        seen: set[str] = set()
        for name, owner in self.owner.items():
            key = self._keys[name]
            if owner != prefix or name in self.frozen or key in seen:
                continue
            seen.add(key)
            if key in self.free:
                groups["weights"].append(self.free[key])
            elif key in self.biases:
                groups["biases"].append(self.biases[key])
            else:
                groups["ranges"].append(self.ranges[key])
        return groups

    def weight(self, name: str) -> torch.Tensor:
        q = torch.clamp(ste_round(self.free[self._keys[name]]), -127, 127)
        return q * self.row_scales[name]

    def _read(self, name: str, env: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if name not in env and name in self._keys and self._keys[name] in self.biases:
            return self.biases[self._keys[name]]
        return super()._read(name, env)

    def write_back(self, float_graph: Graph, quantized: Graph) -> Graph:
        """The learned params as an IR of ``quantized``'s recipe."""
        out = copy_graph(quantized)
        with torch.no_grad():
            for name, dtype in self.range_dtypes.items():
                out.quant[name] = activation_spec(*self.activation_range(name), dtype)
            for weight, node in self.linears.items():
                q = torch.clamp(torch.round(self.free[self._keys[weight]]), -127, 127)
                out.constants[weight] = q.numpy().astype(np.int8)
                bias = node.inputs[2] if len(node.inputs) > 2 else ""
                if bias and bias in self._keys and node.inputs[0] in out.quant:
                    value = self.biases[self._keys[bias]].numpy().astype(np.float32)
                    out.constants[bias], out.quant[bias] = integer_bias(
                        value, out.quant[node.inputs[0]], out.quant[weight]
                    )
        out.validate()
        return out


def _segments(graph: Graph, prefixes: list[str]) -> dict[str, list[Node]]:
    """Each layer's nodes: from its first node up to the next layer's first (so nodes named
    otherwise, like the Requantize nodes the full-integer recipes insert, go with the layer
    they sit in); the last layer ends at its last node."""
    named = [_layer_of(n) for n in graph.nodes]
    starts = [named.index(p) for p in prefixes]
    end = len(named) - named[::-1].index(prefixes[-1])
    bounds = [*starts[1:], end]
    return {p: graph.nodes[a:b] for p, a, b in zip(prefixes, starts, bounds, strict=True)}


def _same(graph: Graph, a: str, b: str) -> bool:
    x, y = graph.quant[a], graph.quant[b]
    return (
        x.dtype is y.dtype
        and x.scale.tobytes() == y.scale.tobytes()
        and np.array_equal(x.zero_point, y.zero_point)
    )


def _boundary(graph: Graph, nodes: list[Node]) -> tuple[list[str], list[str]]:
    """What a run of ``nodes`` reads from outside it, and which of its values are read after it."""
    made = {n.outputs[0] for n in nodes}
    names = {id(n) for n in nodes}
    needs: list[str] = []
    for node in nodes:
        for name in node.inputs:
            if name and name not in made and name not in graph.constants and name not in needs:
                needs.append(name)
    later = {i for n in graph.nodes if id(n) not in names for i in n.inputs} | set(graph.outputs.values())
    return needs, [n.outputs[0] for n in nodes if n.outputs[0] in later]


def reconstruct_layers(
    float_graph: Graph,
    quantized: Graph,
    calib: CalibrationSet,
    *,
    epochs: int,
    seed: int,
    progress: Progress | None = None,
) -> tuple[Graph, dict[str, object]]:
    """``quantized`` with every layer fitted in turn to the float layer's output; per layer, the
    held-out loss before and after (``layers``)."""
    torch.manual_seed(seed)
    prefixes = layer_prefixes(quantized)
    if not prefixes or epochs <= 0:
        return quantized, {"layers": []}
    student = BlockStudent(float_graph, quantized)
    teacher = LearnableGraph(float_graph, float_graph)
    layers = _segments(quantized, prefixes)
    first = quantized.nodes.index(layers[prefixes[0]][0])
    boundaries = {p: _boundary(quantized, nodes) for p, nodes in layers.items()}
    in_float = {n.outputs[0] for n in float_graph.nodes}
    fitted = {p: [o for o in boundaries[p][1] if o in in_float] for p in prefixes}  # not Requantize copies
    targets = [name for p in prefixes for name in fitted[p]]
    wanted = {name for p in prefixes for name in boundaries[p][0]}

    batches = []  # (dims, mask, the quantized model's values, the float targets)
    with torch.no_grad():
        for batch in calibration_batches(float_graph, ordered_by_length(calib), BATCH):
            inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
            mask = inputs["attention_mask"].float() if "attention_mask" in inputs else None
            reference = teacher(inputs, keep=targets)
            dims = student.dims(inputs)
            env = student.run_nodes(quantized.nodes[:first], dict(inputs), dims)
            batches.append((dims, mask, {k: v for k, v in env.items() if k in wanted}, reference))
    held = set(range(HOLD_OUT_EVERY - 1, len(batches), HOLD_OUT_EVERY)) if len(batches) >= 16 else set()
    train = [i for i in range(len(batches)) if i not in held]
    check = sorted(held) or train
    rng = np.random.default_rng(seed)
    report: list[dict[str, object]] = []

    for index, prefix in enumerate(prefixes):
        nodes, outputs = layers[prefix], fitted[prefix]

        def loss_on(i: int, nodes: list[Node] = nodes, outputs: list[str] = outputs) -> torch.Tensor:
            dims, mask, env, reference = batches[i]
            values = student.run_nodes(nodes, dict(env), dims)
            return distill_loss({o: values[o] for o in outputs}, {o: reference[o] for o in outputs}, mask)

        def held_loss() -> float:
            with torch.no_grad():
                return sum(float(loss_on(i)) for i in check) / len(check)

        groups = student.parameters_of(prefix)
        saved = {id(p): p.detach().clone() for g in groups.values() for p in g}
        before = held_loss()
        rates = {"weights": LR_WEIGHT, "biases": LR_BIAS, "ranges": LR_RANGE}
        optimizer = torch.optim.Adam([{"params": g, "lr": rates[k]} for k, g in groups.items() if g])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * len(train)))
        for _ in range(epochs):
            for i in rng.permutation(train):
                loss = loss_on(int(i))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        after = held_loss()
        kept = after < before
        if not kept:
            with torch.no_grad():
                for g in groups.values():
                    for p in g:
                        p.copy_(saved[id(p)])
        report.append(
            {
                "layer": prefix,
                "loss_before": float(f"{before:.6g}"),
                "loss_after": float(f"{after:.6g}"),
                "kept": kept,
            }
        )
        with torch.no_grad():  # what the next layer reads: this layer's output as now learned
            for dims, _, env, _ in batches:
                values = student.run_nodes(nodes, dict(env), dims)
                env.update({k: v for k, v in values.items() if k in wanted})
        if progress:
            progress(index + 1, len(prefixes))
    return student.write_back(float_graph, quantized), {"layers": report}
