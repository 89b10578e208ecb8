"""A quantized IR graph as a torch module whose quantization params can be learned.

What is learned (everything else is the graph's own, fixed):
- each smoothing Mul's scale ``s`` (as ``log s``; the Mul multiplies by ``1/s`` and the weights
  of the Linears it feeds by ``s``), so outliers can move between activations and weights;
- each static per-tensor activation range ``[lo, hi]`` (8-bit asymmetric or 16-bit symmetric,
  the recipe's dtype), the step and zero point following from it as ``activation_spec`` does.

Weights are the float model's, times ``s``, rounded to the nearest int8 step per output row
(``scale = max|row| / 127``), as the engine rounds them. Rounding, clamping and the zero point go
through straight-through estimators (their gradient is that of the identity), so the loss sees
the quantized forward pass and still moves the params.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from qexport.ir.arith import dequantize
from qexport.ir.graph import Graph, Node, QDType, QuantSpec
from qexport.ir.ops import Op
from qexport.ir.symbols import bind
from qexport.learn.kernels import TORCH_KERNELS
from qexport.quant.gptq import rounded_linears


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def fixed_fake_quant(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """A spec that is not learned (per-channel outputs, ...): dequantize(quantize(x))."""
    shape = [1] * x.ndim
    scale, zero = torch.from_numpy(spec.scale), torch.from_numpy(spec.zero_point.astype(np.float32))
    if spec.axis is not None:
        shape[spec.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    q = torch.clamp(ste_round(x / scale) + zero, spec.dtype.qmin, spec.dtype.qmax)
    return (q - zero) * scale


class LearnableGraph(torch.nn.Module):
    """``quantized`` run in torch, its smoothing scales and activation ranges as parameters.
    ``float_graph`` supplies the float weights and biases (same constant names)."""

    def __init__(self, float_graph: Graph, quantized: Graph) -> None:
        super().__init__()
        self.graph = quantized
        self.smooth = torch.nn.ParameterDict()  # inv_smooth constant -> log s
        self.ranges = torch.nn.ParameterDict()  # activation value -> [lo, hi]
        self._keys: dict[str, str] = {}
        self.fixed_specs: dict[str, QuantSpec] = {}
        self.range_dtypes: dict[str, QDType] = {}
        self.weights: dict[str, tuple[torch.Tensor, str | None]] = {}  # weight -> (float W, inv_smooth)
        producers = quantized.producer()
        for node in quantized.nodes:
            if node.op is Op.MUL and node.inputs[1].endswith(".inv_smooth"):
                inverse = quantized.constants[node.inputs[1]]
                self.smooth[self._key(node.inputs[1])] = torch.nn.Parameter(
                    torch.from_numpy(-np.log(inverse))
                )
        for node in rounded_linears(quantized):
            if node.inputs[1] not in float_graph.constants:
                continue
            producer = producers.get(node.inputs[0])
            inv = (
                producer.inputs[1]
                if producer is not None
                and producer.inputs[1:2]
                and (producer.inputs[1].endswith(".inv_smooth"))
                else None
            )
            weight = torch.from_numpy(float_graph.constants[node.inputs[1]].astype(np.float32))
            self.weights[node.inputs[1]] = (weight, inv)
        for name, spec in quantized.quant.items():
            if name in quantized.constants or spec.dynamic:
                continue
            if spec.axis is None and spec.dtype in (QDType.UINT8, QDType.INT8, QDType.INT16):
                lo = float((spec.dtype.qmin - int(spec.zero_point)) * spec.scale)
                hi = float((spec.dtype.qmax - int(spec.zero_point)) * spec.scale)
                self.ranges[self._key(name)] = torch.nn.Parameter(torch.tensor([lo, hi], dtype=torch.float32))
                self.range_dtypes[name] = spec.dtype
            else:
                self.fixed_specs[name] = spec
        self.constants: dict[str, torch.Tensor] = {}
        for name, array in quantized.constants.items():
            if name in self.weights or name in self._keys:
                continue
            stored = quantized.quant.get(name)
            if stored is not None and stored.dtype is QDType.INT32 and name in float_graph.constants:
                array = float_graph.constants[name]  # int32 biases: the float bias (its step is tiny)
            elif stored is not None:
                array = dequantize(array, stored)
            self.constants[name] = torch.from_numpy(np.ascontiguousarray(array))

    def _key(self, name: str) -> str:
        key = f"p{len(self._keys)}"  # ParameterDict keys may not contain dots
        self._keys[name] = key
        return key

    def inv_smooth(self, name: str) -> torch.Tensor:
        return torch.exp(-self.smooth[self._keys[name]])

    def weight(self, name: str) -> torch.Tensor:
        weight, inv = self.weights[name]
        if inv is not None:
            weight = weight * torch.exp(self.smooth[self._keys[inv]])[None, :]
        scale = weight.detach().abs().amax(1, keepdim=True).clamp_min(1e-30) / 127
        return torch.clamp(ste_round(weight / scale), -127, 127) * scale

    def activation_range(self, name: str) -> tuple[float, float]:
        lo, hi = self.ranges[self._keys[name]].detach().tolist()
        return float(lo), float(hi)

    def _fake_quant(self, x: torch.Tensor, name: str) -> torch.Tensor:
        dtype = self.range_dtypes[name]
        lo, hi = self.ranges[self._keys[name]]
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        if dtype is QDType.INT16:
            scale = torch.maximum(-lo, hi).clamp_min(1e-30) / dtype.qmax
            return torch.clamp(ste_round(x / scale), dtype.qmin, dtype.qmax) * scale
        scale = (hi - lo).clamp_min(1e-30) / (dtype.qmax - dtype.qmin)
        zero = torch.clamp(ste_round(dtype.qmin - lo / scale), dtype.qmin, dtype.qmax)
        return (torch.clamp(ste_round(x / scale) + zero, dtype.qmin, dtype.qmax) - zero) * scale

    def _read(self, name: str, env: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if name in env:
            return env[name]
        if name in self.weights:
            return self.weight(name)
        if name in self._keys and self._keys[name] in self.smooth:
            return self.inv_smooth(name)
        return self.constants[name]

    def dims(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """The graph's symbolic dims bound from the shapes of ``inputs``."""
        return bind(
            [(n, info.shape) for n, info in self.graph.inputs.items()],
            {n: tuple(a.shape) for n, a in inputs.items()},
        )

    def run_nodes(
        self, nodes: Iterable[Node], env: dict[str, torch.Tensor], dims: Mapping[str, int]
    ) -> dict[str, torch.Tensor]:
        """Run ``nodes`` in order on ``env`` (values by name), adding their outputs to it."""
        for node in nodes:
            args = [self._read(i, env) if i else None for i in node.inputs]
            y = TORCH_KERNELS[node.op](args, node.attrs, dims)
            out = node.outputs[0]
            if out in self.range_dtypes:
                y = self._fake_quant(y, out)
            elif out in self.fixed_specs:
                y = fixed_fake_quant(y, self.fixed_specs[out])
            env[out] = y
        return env

    def forward(
        self, inputs: Mapping[str, torch.Tensor], keep: Iterable[str] = ()
    ) -> dict[str, torch.Tensor]:
        graph = self.graph
        dims = self.dims(inputs)
        env = self.run_nodes(graph.nodes, dict(inputs), dims)
        result = {k: env[v] for k, v in graph.outputs.items()}
        result.update({name: env[name] for name in keep})
        return result
