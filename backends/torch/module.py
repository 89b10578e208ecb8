"""An nn.Module that executes an IR graph with torch ops — traced once by torch.export.

Integer paths (why the exported program is faster than fp32):
- a Linear whose weight is int8 (per-channel) and whose input carries a static 8-bit spec runs
  ``torch._int_mm`` on int8 x int8 -> int32; uint8 activations are shifted by 128 into int8
  and the shift is corrected with the weight's row sums, exactly:
  ``(q - zp) @ W = (q - 128) @ W - (zp - 128) * rowsum(W)``;
- a dynamic (per-token) spec quantizes each row to int8 at run time, then ``_int_mm`` too;
- anything else (int16 islands, float Linears) dequantizes the weight and runs float.

``gemm="float"`` computes the same integer sums with a float32 matmul of the integer values
(the int8 weight widened per call): exact while every partial sum stays below 2**24, and the
only fast choice on CPUs where ``_int_mm`` has no int8 kernel (docs/backend-torch.md). It
multiplies ``q - zp`` itself (no shift, no correction) and sums the int32 bias inside
``torch.addmm``: two ops fewer per Linear, the same integers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qexport.backends.torch.gemm import GEMMS
from qexport.backends.torch.ops import TORCH_OPS, cast, exact_gelu, exact_layer_norm, exact_softmax
from qexport.ir import exact_ops
from qexport.ir.graph import Graph, Node, QDType, QuantSpec
from qexport.ir.linear import LinearForm, classify
from qexport.ir.ops import Op
from qexport.ir.symbols import bind


def buffer_name(name: str) -> str:
    """The key of IR constant ``name`` (or of ``name/scale``, ``name/transposed``…) in the program's
    state dict: ``c_`` and the name with every non-alphanumeric character as ``_``."""
    return "c_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def _spec_tensors(spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(spec.scale.copy()), torch.from_numpy(spec.zero_point.copy())


class IRModule(torch.nn.Module):
    def __init__(self, graph: Graph, gemm: str = "int8", ops: dict[Op, Any] | None = None) -> None:
        super().__init__()
        if gemm not in GEMMS:
            raise ValueError(f"gemm must be one of {GEMMS}, got {gemm!r}")
        self.graph = graph
        self.gemm = gemm
        self.ops = {**TORCH_OPS, **(ops or {})}  # a target's own forms of some ops (executorch)
        self.buffer_of: dict[str, str] = {}
        consumers = graph.consumers()
        integer = [n for n in graph.nodes if n.op is Op.LINEAR and self._integer_linear(n)]
        # Integer Linears keep their int8 weight transposed ([K, M], what _int_mm takes) and
        # nothing else; a weight that something else also reads keeps its IR layout too.
        transposed_only = {
            n.inputs[1]
            for n in integer
            if all(c.op is Op.LINEAR and self._integer_linear(c) for c in consumers[n.inputs[1]])
        }
        for name, array in graph.constants.items():
            if name not in transposed_only:
                self._add(name, array)
            spec = graph.quant.get(name)
            if spec is not None:
                self._add(f"{name}/scale", spec.scale)
                if spec.zero_point.any():  # symmetric (all-zero) zero points are implied, not stored
                    self._add(f"{name}/zero_point", spec.zero_point)
        self.integer_inputs: set[str] = set()
        for node in integer:
            q = graph.constants[node.inputs[1]]
            x_name = node.inputs[0]
            x_spec = graph.quant[x_name]
            self._add(f"{node.inputs[1]}/transposed", np.ascontiguousarray(q.T))
            if not x_spec.dynamic:
                self._add_integer_epilogue(node, q, x_spec)
            else:
                self._add(f"{node.name}/bias_float", self._float_bias(node))
                if f"{node.inputs[1]}/colsum" not in self.buffer_of:
                    # sum_k W[j, k]: the zero-point correction zp * colsum of the asymmetric rows
                    self._add(f"{node.inputs[1]}/colsum", q.astype(np.int32).sum(axis=1, dtype=np.int32))
            self.integer_inputs.add(x_name)
        # A value read only by integer Linears never needs its fake-quantized float form.
        self.float_needed = {
            v
            for v in self.integer_inputs
            if any(c.op is not Op.LINEAR or not self._integer_linear(c) for c in consumers.get(v, []))
        }
        for name, spec in graph.quant.items():
            if name not in graph.constants and not spec.dynamic:
                self._add(f"{name}/scale", spec.scale)
                self._add(f"{name}/zero_point", spec.zero_point)
        self.exact = exact_ops.exact_ops(graph, softmax=True)  # run in float64 as the IR does

    def _float_bias(self, node: Node) -> np.ndarray:
        """The Linear's bias as float32 (dequantized once here; zeros when absent)."""
        out_dim = self.graph.constants[node.inputs[1]].shape[0]
        name = node.inputs[2] if len(node.inputs) > 2 else ""
        if not name:
            return np.zeros(out_dim, np.float32)
        array, spec = self.graph.constants[name], self.graph.quant.get(name)
        if spec is None:
            return array.astype(np.float32)
        return ((array.astype(np.int64) - spec.zero_point).astype(np.float32) * spec.scale).astype(np.float32)

    def _add_integer_epilogue(self, node: Node, q: np.ndarray, x_spec: QuantSpec) -> None:
        """Buffers that make ``y = (acc + bias_int) * scale`` equal the IR's integer Linear.

        uint8 inputs are shifted by 128 into int8 for ``_int_mm``; the shift is undone in
        integers: ``(q - zp) @ W = (q - 128) @ W - (zp - 128) * rowsum(W)``, folded with the
        int32 bias into one int32 vector (a float GEMM reads ``q - zp`` and folds nothing). One float32 multiply of an integer below 2**24 is
        the IR's single rounding of ``(acc + q_bias) * s_b`` (docs/ir.md, "Integer Linears").
        """
        x_name = node.inputs[0]
        shift = self._shift(x_spec)
        if shift != int(x_spec.zero_point) and f"{x_name}/zp_shifted" not in self.buffer_of:
            self._add(f"{x_name}/zp_shifted", np.asarray(float(int(x_spec.zero_point) - shift), np.float32))
        correction = (int(x_spec.zero_point) - shift) * q.astype(np.int64).sum(axis=1)
        w_spec = self.graph.quant[node.inputs[1]]
        bias = node.inputs[2] if len(node.inputs) > 2 else ""
        b_spec = self.graph.quant.get(bias) if bias else None
        if b_spec is not None and b_spec.dtype.value == "int32":
            folded = self.graph.constants[bias].astype(np.int64) - correction
            scale = b_spec.scale
        else:
            folded = -correction
            scale = (x_spec.scale * w_spec.scale).astype(np.float32)
            if bias:
                self._add(f"{node.name}/bias_float", self._float_bias(node))
        if np.abs(folded).max(initial=0) >= 2**31:
            raise ValueError(f"{node.name}: folded int32 bias overflows")
        if self.gemm == "float" and np.abs(folded).max(initial=0) < 2**24:
            # an integer-valued float32 bias that addmm sums with the integers, still exactly
            self._add(f"{node.name}/bias_sum", folded.astype(np.float32))
        else:
            self._add(f"{node.name}/bias_int", folded.astype(np.int32))
        self._add(f"{node.name}/out_scale", np.asarray(scale, np.float32))

    def _shift(self, spec: QuantSpec) -> int:
        """What the GEMM's integers are offset by: ``_int_mm`` needs int8, so uint8 moves by 128;
        a float GEMM takes ``q - zp`` itself, which leaves no zero-point correction."""
        if self.gemm == "float":
            return int(spec.zero_point)
        return 128 if spec.dtype.value == "uint8" else 0

    def _add(self, name: str, array: np.ndarray) -> None:
        buffer = buffer_name(name)
        self.buffer_of[name] = buffer
        self.register_buffer(buffer, torch.from_numpy(np.array(array, copy=True)), persistent=True)

    def t(self, name: str) -> torch.Tensor:
        tensor: torch.Tensor = getattr(self, self.buffer_of[name])
        return tensor

    def zero_point(self, name: str) -> torch.Tensor | int:
        """A constant's zero point buffer, or 0 when it was symmetric (not stored)."""
        return self.t(f"{name}/zero_point") if f"{name}/zero_point" in self.buffer_of else 0

    def _integer_linear(self, node: Node) -> bool:
        """Linears this module multiplies in integers: the IR's ``STATIC`` form with an 8-bit input
        and its ``STEPS`` form, with int8 weights (``_int_mm`` takes int8 operands; int4 and 16-bit
        inputs run as the float matmul of their fake-quantized values)."""
        info = classify(self.graph, node)
        if info.w_spec is None or info.w_spec.dtype.value != "int8":
            return False
        return (info.form is LinearForm.STATIC and info.eight_bit_input) or info.form is LinearForm.STEPS

    # -- values -----------------------------------------------------------
    def constant(self, name: str) -> torch.Tensor:
        tensor = self.t(name)
        spec = self.graph.quant.get(name)
        if spec is None:
            return tensor
        scale, zero = self.t(f"{name}/scale"), self.zero_point(name)
        if spec.axis is not None:
            shape = [1] * tensor.ndim
            shape[spec.axis] = -1
            scale = scale.reshape(shape)
            zero = zero.reshape(shape) if isinstance(zero, torch.Tensor) else zero
        return cast(cast(tensor, torch.int32) - zero, torch.float32) * scale

    def fake_quant(self, name: str, x: torch.Tensor) -> torch.Tensor:
        spec = self.graph.quant[name]
        if spec.dynamic and not spec.symmetric:
            q, zero, scale = _asymmetric_rows(x, spec.axis, spec.dtype)
            return (q - zero) * scale  # small integers: exact in float32
        if spec.dynamic:
            scale = self._dynamic_scale(x, spec)
            return torch.clamp(torch.round(x / scale), -spec.dtype.qmax, spec.dtype.qmax) * scale
        scale, zero = self.t(f"{name}/scale"), self.t(f"{name}/zero_point")
        q = torch.clamp(torch.round(x / scale) + zero, spec.dtype.qmin, spec.dtype.qmax)
        return (q - zero) * scale

    def _dynamic_scale(self, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
        if spec.axis is None:
            amax = x.abs().amax()
        else:
            amax = x.abs().amax(dim=spec.axis, keepdim=True)
        return torch.where(amax > 0, amax / float(spec.dtype.qmax), torch.ones_like(amax))

    # -- ops --------------------------------------------------------------
    def _row_quantized(self, table: str) -> bool:
        spec = self.graph.quant.get(table)
        return table in self.graph.constants and spec is not None and spec.axis == 0

    def gather_rows(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """Pick int8 rows first, then dequantize only those (never the whole table per call)."""
        rows = self.t(table)[ids]
        scale = self.t(f"{table}/scale")[ids].unsqueeze(-1)
        zero = self.zero_point(table)
        if isinstance(zero, torch.Tensor):
            return cast(cast(rows, torch.int32) - zero[ids].unsqueeze(-1), torch.float32) * scale
        return cast(rows, torch.float32) * scale

    def integers(self, q: torch.Tensor) -> torch.Tensor:
        """Integer-valued float rows as the GEMM reads them: int8 for ``_int_mm``, else as they are."""
        return cast(q, torch.int8) if self.gemm == "int8" else q

    def matmul_integers(self, q: torch.Tensor, w_name: str) -> torch.Tensor:
        """``q @ W`` summed exactly: int32 from ``_int_mm``, or integer-valued float32."""
        weight = self.t(f"{w_name}/transposed")
        if self.gemm == "int8":
            return torch._int_mm(q, weight)
        return torch.mm(q, cast(weight, torch.float32))

    def quantized_rows(self, x_name: str, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The int8 rows ``_int_mm`` reads for value ``x_name`` (and the per-row scales — with
        the zero points of an asymmetric one — of a dynamic spec). Computed once per value:
        Q, K and V share theirs."""
        spec = self.graph.quant[x_name]
        rows = x.reshape(-1, x.shape[-1])
        if spec.dynamic:  # STEPS: asymmetric rows (or the whole tensor) by the spec's rule
            q, zero, scale = _asymmetric_rows(rows, None if spec.axis is None else -1, spec.dtype)
            return self.integers(q), (scale, zero)
        shift = self._shift(spec)
        # round(x / s) + zp, clamped, minus the shift: the IR's integers
        q = torch.round(rows / self.t(f"{x_name}/scale"))
        if shift != int(spec.zero_point):
            q = q + self.t(f"{x_name}/zp_shifted")
        return self.integers(torch.clamp(q, spec.dtype.qmin - shift, spec.dtype.qmax - shift)), None

    def linear(
        self,
        node: Node,
        raw: dict[str, torch.Tensor],
        env: dict[str, torch.Tensor],
        integers: dict[str, tuple[torch.Tensor, Any]],
    ) -> torch.Tensor:
        x_name, w_name = node.inputs[0], node.inputs[1]
        if not self._integer_linear(node):
            bias = self.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
            return torch.nn.functional.linear(env[x_name], self.constant(w_name), bias)
        x = raw[x_name]
        if x_name not in integers:
            integers[x_name] = self.quantized_rows(x_name, x)
        q, row_scale = integers[x_name]
        if row_scale is None:
            y = self._static_linear(node, q, w_name)
        else:  # STEPS: per-token scale times per-channel weight scale
            row_scale, zero = row_scale  # asymmetric rows: remove zp * sum_k W[j, k] in integers
            acc = self.matmul_integers(q, w_name) - zero * self.t(f"{w_name}/colsum")
            y = torch.addcmul(
                self.t(f"{node.name}/bias_float"),
                cast(acc, torch.float32),
                row_scale * self.t(f"{w_name}/scale"),
            )
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def _static_linear(self, node: Node, q: torch.Tensor, w_name: str) -> torch.Tensor:
        """``(q @ W + bias) * out_scale`` (+ a float bias): the IR's single rounding. A float GEMM
        sums the integer-valued bias inside ``addmm``; otherwise it is added to the int32 sums."""
        if f"{node.name}/bias_sum" in self.buffer_of:
            weight = cast(self.t(f"{w_name}/transposed"), torch.float32)
            acc = torch.addmm(self.t(f"{node.name}/bias_sum"), q, weight)
        else:
            acc = self.matmul_integers(q, w_name) + self.t(f"{node.name}/bias_int")
        y = acc * self.t(f"{node.name}/out_scale")
        if f"{node.name}/bias_float" in self.buffer_of:
            y = y + self.t(f"{node.name}/bias_float")
        return y

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The source model's input names (a fixed signature keeps the .pt2 self-describing)."""
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {name: given[name] for name in self.graph.inputs}
        graph = self.graph
        dims = bind(
            [(n, i.shape) for n, i in graph.inputs.items()], {n: tuple(v.shape) for n, v in inputs.items()}
        )
        env: dict[str, Any] = {n: inputs[n] for n in graph.inputs}
        raw: dict[str, torch.Tensor] = {}
        integers: dict[str, tuple[torch.Tensor, Any]] = {}
        for node in graph.nodes:
            if node.op is Op.LINEAR:
                result = self.linear(node, raw, env, integers)
            elif node.op is Op.GATHER and self._row_quantized(node.inputs[0]):
                result = self.gather_rows(node.inputs[0], env[node.inputs[1]])
            else:
                args = [
                    None if not i else (self.constant(i) if i in graph.constants else env[i])
                    for i in node.inputs
                ]
                exact = self.exact.get(node.name)
                if exact is Op.GELU:
                    result = exact_gelu(args[0])
                elif exact is Op.LAYER_NORM:
                    result = exact_layer_norm(args, node.attrs)
                elif exact is Op.SOFTMAX:
                    result = exact_softmax(args[0], node.attrs)
                else:
                    result = self.ops[node.op](args, node.attrs, dims)
            out = node.outputs[0]
            if out in graph.quant:
                raw[out] = result
                if out not in self.integer_inputs or out in self.float_needed:
                    result = self.fake_quant(out, result)
            env[out] = result
        return {name: env[value] for name, value in graph.outputs.items()}


def _asymmetric_rows(
    x: torch.Tensor, axis: int | None, dtype: QDType = QDType.INT8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The asymmetric run-time rule of ``dtype`` (``qexport.ir.arith.dynamic_params``: XNNPACK's
    for int8, PyTorch's for uint7): integer-valued float values, int32 zero points and float32
    scales, per ``axis`` (kept as a size-1 dim) or per tensor."""
    # every op here is one kernel call in the exported program; the width trick (an all-equal
    # row divides 255 by 255: the rule's multiplier 1) saves two. amin + amax, not aminmax:
    # aminmax over the last dim measured 78 us per call against 11 us for amax
    if axis is None:
        low, high = torch.clamp(x.amin(), max=0.0), torch.clamp(x.amax(), min=0.0)
    else:
        low = torch.clamp(x.amin(dim=axis, keepdim=True), max=0.0)
        high = torch.clamp(x.amax(dim=axis, keepdim=True), min=0.0)
    width = high - low
    if dtype is QDType.UINT7:
        scale = torch.where(width > 0, width, 127.0) / torch.full_like(width, 127.0)
        multiplier = torch.full_like(width, 1.0) / scale
        zero = torch.round(torch.clamp(-low / scale, 0.0, 127.0))
        q = torch.clamp(torch.round(x * multiplier) + zero, 0.0, 127.0)
        return q, cast(zero, torch.int32), scale
    # a true division (255 / width, as the rule says): ``255.0 / tensor`` is reciprocal() * 255
    # in torch, two roundings, and gave scales one ulp off the IR's (tests/test_dynamic_rule.py)
    multiplier = torch.full_like(width, 255.0) / torch.where(width > 0, width, 255.0)
    low_s, high_s = low * multiplier, high * multiplier
    zero = torch.where((-128.0 + low_s) + (127.0 + high_s) > 0, -128.0 - low_s, 127.0 - high_s)
    zero = torch.round(torch.clamp(zero, -128.0, 127.0))
    q = torch.clamp(torch.round(x * multiplier) + zero, -128.0, 127.0)
    return q, cast(zero, torch.int32), 1.0 / multiplier
