"""Find float attention islands in an IR graph: what a backend may compute as one fused op.

A captured BERT layer reads its attention as ~13 IR ops::

    q, k, v = Linear(x)                       # [batch, seq, heads * dim]
    qh = Transpose(Reshape(q, [b, s, heads, dim]), (0, 2, 1, 3))
    kt = Transpose(Transpose(Reshape(k, ...), (0, 2, 1, 3)), (0, 1, 3, 2))   # or (0, 2, 3, 1)
    vh = Transpose(Reshape(v, ...), (0, 2, 1, 3))
    p = Softmax(MatMul(qh, kt) [* c] [+ mask])
    out = Reshape(Transpose(MatMul(p, vh), (0, 2, 1, 3)), [b, s, heads * dim])

When every value strictly inside that chain is float (no QuantSpec), read by one node and not
a graph output, it is plain scaled-dot-product attention over the 3-D q, k, v, and a backend
may hand it to its runtime's fused kernel. The ONNX backend does (``Attention``, opset 23:
bit-identical, ~10 % faster); the torch backend measured ``scaled_dot_product_attention`` at
4 % faster but 0.3 dB further from the IR and does not (docs/backend-torch.md). Recipes that quantize the attention MatMuls' inputs put
QuantSpecs inside the chain, so nothing matches and the ops lower one by one.

``fuse_attention`` is the pass: it replaces each island by one ``Attention`` node (``Op.ATTENTION``)
at the island's last position, so the backend lowers it through its table like any op.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qexport.ir.graph import Graph, Node, copy_graph
from qexport.ir.ops import Op

_HEADS_FIRST = [0, 2, 1, 3]


@dataclass(frozen=True)
class AttentionMatch:
    """One attention island: the IR values a fused kernel reads, and the nodes it replaces."""

    query: str
    key: str
    value: str
    mask: str | None
    scale: float
    heads: int
    head_dim: int
    output: str
    covered: tuple[str, ...]  # IR node names, in graph order; the last one produces ``output``


def find_attention(graph: Graph) -> list[AttentionMatch]:
    """Every float attention island of ``graph``, in graph order."""
    producer, consumers = graph.producer(), graph.consumers()
    matches = []
    for softmax in (n for n in graph.nodes if n.op is Op.SOFTMAX):
        match = _match(graph, softmax, producer, consumers)
        if match is not None:
            matches.append(match)
    return matches


def fuse_attention(graph: Graph) -> Graph:
    """A copy of ``graph`` with every float attention island replaced by one ``Attention`` node
    named after the island's output; ``graph`` is not modified."""
    out = copy_graph(graph)
    matches = find_attention(out)
    if not matches:
        return out
    fused = {m.covered[-1]: m for m in matches}
    inside = {name for m in matches for name in m.covered[:-1]}
    nodes, dropped = [], set()
    for node in out.nodes:
        if node.name in inside:
            for value in node.outputs:
                out.values.pop(value, None)  # private to the island: nothing else reads it
            dropped.update(node.inputs)
            continue
        match = fused.get(node.name)
        if match is not None:
            inputs = [match.query, match.key, match.value, *([match.mask] if match.mask else [])]
            attrs = {"heads": match.heads, "head_dim": match.head_dim, "scale": match.scale}
            node = Node(f"{match.output}_attention", Op.ATTENTION, inputs, [match.output], attrs)
        nodes.append(node)
    out.nodes = nodes
    used = {name for node in nodes for name in node.inputs} | set(out.outputs.values())
    for name in [c for c in dropped & set(out.constants) if c not in used]:
        del out.constants[name]  # the score scale, now an attribute
        out.quant.pop(name, None)
    return out


class _Walk:
    """Follows producers through private float values, remembering the nodes it passed."""

    def __init__(self, graph: Graph, producer: dict[str, Node], consumers: dict[str, list[Node]]) -> None:
        self.graph, self.producer, self.consumers = graph, producer, consumers
        self.covered: list[Node] = []

    def private(self, value: str) -> bool:
        info = self.graph.values.get(value)
        return (
            info is not None
            and info.dtype == "float32"
            and len(self.consumers.get(value, [])) == 1
            and value not in self.graph.outputs.values()
            and value not in self.graph.quant
        )

    def take(self, value: str, op: Op) -> Node | None:
        """The node producing private ``value`` if it is an ``op``; it joins the covered nodes."""
        node = self.producer.get(value)
        if node is None or node.op is not op or not self.private(value):
            return None
        self.covered.append(node)
        return node

    def heads(self, value: str, perms: tuple[list[int], ...]) -> tuple[str, int, int] | None:
        """``value`` = Transpose*(Reshape(x, [b, s, heads, dim])) with ``perms`` in turn, from
        the outermost; return (x, heads, dim) with x 3-D [b, s, heads * dim]. On a mismatch
        the nodes it passed leave the covered list again."""
        mark = len(self.covered)
        found = self._heads(value, perms)
        if found is None:
            del self.covered[mark:]
        return found

    def _heads(self, value: str, perms: tuple[list[int], ...]) -> tuple[str, int, int] | None:
        for perm in perms:
            node = self.take(value, Op.TRANSPOSE)
            if node is None or list(node.attrs["perm"]) != perm:
                return None
            value = node.inputs[0]
        reshape = self.take(value, Op.RESHAPE)
        if reshape is None:
            return None
        split = self.graph.values[value].shape
        source = self.graph.values.get(reshape.inputs[0])
        if source is None or len(split) != 4 or len(source.shape) != 3:
            return None
        heads, dim = split[2], split[3]
        if not (isinstance(heads, int) and isinstance(dim, int)) or source.shape[2] != heads * dim:
            return None
        if list(split[:2]) != list(source.shape[:2]) or source.dtype != "float32":
            return None
        return reshape.inputs[0], heads, dim


def _match(
    graph: Graph, softmax: Node, producer: dict[str, Node], consumers: dict[str, list[Node]]
) -> AttentionMatch | None:
    walk = _Walk(graph, producer, consumers)
    probs = softmax.outputs[0]
    rank = len(graph.values[probs].shape)
    if rank != 4 or int(softmax.attrs["axis"]) not in (-1, 3) or not walk.private(probs):
        return None
    context = consumers[probs][0]
    if context.op is not Op.MATMUL or context.inputs[0] != probs:
        return None
    # Output side: MatMul(p, vh) -> Transpose (0, 2, 1, 3) -> Reshape [b, s, heads * dim].
    flat = _output_reshape(walk, context)
    if flat is None:
        return None
    walk.covered.extend([context, softmax])
    scores, mask = softmax.inputs[0], None
    add = walk.take(scores, Op.ADD)
    if add is not None:
        split = _split_mask(graph, producer, add)
        if split is None:
            return None
        scores, mask = split
    scale = 1.0
    mul = walk.take(scores, Op.MUL)
    if mul is not None:
        operand = _scalar_operand(graph, mul)
        if operand is None:
            return None
        scores, scale = operand
    matmul = walk.take(scores, Op.MATMUL)
    if matmul is None:
        return None
    q = walk.heads(matmul.inputs[0], (_HEADS_FIRST,))
    k = walk.heads(matmul.inputs[1], ([0, 1, 3, 2], _HEADS_FIRST))
    if k is None:  # one transpose straight to [b, heads, dim, s]
        k = walk.heads(matmul.inputs[1], ([0, 2, 3, 1],))
    v = walk.heads(context.inputs[1], (_HEADS_FIRST,))
    if q is None or k is None or v is None or not (q[1:] == k[1:] == v[1:]):
        return None
    if graph.values[flat.outputs[0]].shape != graph.values[q[0]].shape:
        return None
    order = {node.name: i for i, node in enumerate(graph.nodes)}
    covered = sorted({n.name for n in walk.covered}, key=order.__getitem__)
    if covered[-1] != flat.name:
        return None
    return AttentionMatch(q[0], k[0], v[0], mask, scale, q[1], q[2], flat.outputs[0], tuple(covered))


def _output_reshape(walk: _Walk, context: Node) -> Node | None:
    value = context.outputs[0]
    if not walk.private(value) or walk.consumers[value][0].op is not Op.TRANSPOSE:
        return None
    transpose = walk.consumers[value][0]
    if list(transpose.attrs["perm"]) != _HEADS_FIRST or not walk.private(transpose.outputs[0]):
        return None
    flat = walk.consumers[transpose.outputs[0]][0]
    if flat.op is not Op.RESHAPE or len(walk.graph.values[flat.outputs[0]].shape) != 3:
        return None
    walk.covered.extend([transpose, flat])
    return flat


def _split_mask(graph: Graph, producer: dict[str, Node], add: Node) -> tuple[str, str] | None:
    """(scores, mask) of ``scores + mask``: the mask is a float [b, 1, 1 or s, s] value made
    outside the island (it is shared by every layer)."""
    for scores, mask in (add.inputs, add.inputs[::-1]):
        info = graph.values.get(mask) or graph.inputs.get(mask)
        if info is None or scores not in producer or info.dtype != "float32" or len(info.shape) != 4:
            continue
        if info.shape[1] == 1 and producer[scores].op in (Op.MATMUL, Op.MUL):
            return scores, mask
    return None


def _scalar_operand(graph: Graph, mul: Node) -> tuple[str, float] | None:
    for scores, const in (mul.inputs, mul.inputs[::-1]):
        array = graph.constants.get(const)
        if array is not None and array.size == 1 and array.dtype == np.float32 and const not in graph.quant:
            return scores, float(array.reshape(()))
    return None
