"""The IR's static specs as ExecuTorch's quantized ops, for XNNPACK's static int8 kernels.

A static IR whose Linears read and write 8-bit per-tensor values (``npu-int8`` on BERT models)
becomes a torch module in the form pt2e's ``convert_pt2e`` leaves behind, so the XNNPACK
partitioner recognizes its patterns:
- every static 8-bit value crosses as ``quantize_per_tensor`` → ``dequantize_per_tensor`` at
  the IR's scale and zero point (uint8 moves by 128 into int8: ``q - zp`` is unchanged, and
  XNNPACK's per-channel Linear takes only int8 inputs);
- every Linear weight is its int8 constant behind ``dequantize_per_channel``, its bias the
  float ``q_b · s_x·s_w`` (XNNPACK quantizes it back to the same int32);
- each consumer gets its own ``dequantize`` (a shared one makes partitions that depend on
  each other, which ExecuTorch cannot fuse).

What runs fast on a phone's XNNPACK is chosen over the CPU files' float details, measured on
MiniLM (docs/backend-executorch.md): every other quantized constant and the embedding tables
are float32 once (a cast per call runs on portable kernels), and GELU is torch's float32 one,
which XNNPACK runs (the IR's float64 GELU would not be delegated). Values with other specs
(int16, per-channel) are fake-quantized in float, as the IR says, on portable kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qexport.backends.torch.module import IRModule
from qexport.ir.arith import dequantize
from qexport.ir.graph import Graph, Node, QDType
from qexport.ir.ops import Op


class QDQModule(IRModule):
    """``IRModule`` whose 8-bit static values and Linear weights are ExecuTorch's Q/DQ ops."""

    def __init__(self, graph: Graph, ops: dict[Op, Any] | None = None) -> None:
        super().__init__(graph, gemm="float", ops=ops)
        weights = set()
        for node in graph.nodes:
            if node.op is Op.LINEAR:
                self._add(f"{node.name}/bias_qdq", self._float_bias(node))
                self._add(
                    f"{node.inputs[1]}/zeros", np.zeros(graph.constants[node.inputs[1]].shape[0], np.int64)
                )
                weights.add(node.inputs[1])
        # Every other quantized constant (LayerNorm's gamma, the Mul factors...) as float32, once:
        # dequantized per call it cost a cast each (portable kernels, ~0.7 ms apiece on MiniLM).
        for name, spec in graph.quant.items():
            if name in graph.constants and name not in weights:
                self._add(f"{name}/dequantized", dequantize(graph.constants[name], spec))
        self.exact: dict[str, Op] = {}  # XNNPACK's float32 GELU and LayerNorm: docs/backend-executorch.md

    def _row_quantized(self, table: str) -> bool:
        return False  # tables are float: a gather of int8 rows then a cast runs on portable kernels

    def constant(self, name: str) -> torch.Tensor:
        if f"{name}/dequantized" in self.buffer_of:
            return self.t(f"{name}/dequantized")
        return super().constant(name)

    def _integer_linear(self, node: Node) -> bool:
        return False  # every Linear is dq → linear → q, for XNNPACK to match

    def linear(
        self,
        node: Node,
        raw: dict[str, torch.Tensor],
        env: dict[str, torch.Tensor],
        integers: dict[str, tuple[torch.Tensor, Any]],
    ) -> torch.Tensor:
        weight = node.inputs[1]
        spec = self.graph.quant[weight]
        q = self.t(weight)
        dequantized = (
            torch.ops.quantized_decomposed.dequantize_per_channel(
                q,
                self.t(f"{weight}/scale"),
                self.t(f"{weight}/zeros"),
                0,
                -128,
                127,
                torch.int8,
            )
            if spec.axis == 0
            else torch.ops.quantized_decomposed.dequantize_per_tensor(
                q, float(spec.scale), 0, -128, 127, torch.int8
            )
        )
        return torch.nn.functional.linear(env[node.inputs[0]], dequantized, self.t(f"{node.name}/bias_qdq"))

    def fake_quant(self, name: str, x: torch.Tensor) -> torch.Tensor:
        spec = self.graph.quant[name]
        if spec.dynamic or spec.axis is not None or spec.dtype not in (QDType.INT8, QDType.UINT8):
            return super().fake_quant(name, x)
        scale, zero = float(spec.scale), int(spec.zero_point) - (128 if spec.dtype is QDType.UINT8 else 0)
        q = torch.ops.quantized_decomposed.quantize_per_tensor(x, scale, zero, -128, 127, torch.int8)
        return torch.ops.quantized_decomposed.dequantize_per_tensor(q, scale, zero, -128, 127, torch.int8)


def own_dequantize(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Give every user of a shared ``dequantize`` node its own copy (in place)."""
    ops = torch.ops.quantized_decomposed
    dequantize = {ops.dequantize_per_tensor.default, ops.dequantize_per_channel.default}
    for node in list(module.graph.nodes):
        if node.op == "call_function" and node.target in dequantize:
            for user in list(node.users)[1:]:
                with module.graph.inserting_after(node):
                    copy = module.graph.node_copy(node)
                user.replace_input_with(node, copy)
    module.recompile()
    return module
