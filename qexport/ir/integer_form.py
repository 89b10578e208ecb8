"""The full-integer form of a graph: every op one integer kernel (docs/integer.md).

NPUs, DSPs and microcontrollers run each op as an integer kernel: int8 or int16 tensors in,
one requantized tensor out. Three IR ops of a captured BERT have no such kernel but are short
compositions of ops that do, so :func:`to_integer_form` rewrites them once, in the IR, and every
backend lowers the same primitive ops, each IR value becoming one integer tensor:

- **LayerNorm** -> a per-token prescale (Abs, ReduceMax, Rsqrt, [Mul,] Mul; see ``_layer_norm``),
  then ReduceMean, Sub (centre), Mul (square), ReduceMean (variance), Rsqrt, Mul, Mul by the
  weight, Add of the bias. The epsilon is kept as an Add only when it can matter
  (>= 1e-6); BERT's 1e-12 lies far below any variance step, and a zero variance saturates the
  Rsqrt's range either way.
- **The additive attention mask** ``f(cast(mask))`` (BERT: ``(1 - m) * float_min``) -> a Gather
  from a 2-entry table ``[f(0), f(1)]`` indexed by the integer mask: no Cast, no float
  arithmetic on the mask. ``f(0)`` is clamped to ``MASK_FLOOR``: masked scores then saturate at
  the bottom of the score range, and softmax gives them ``exp(lo - max)``, 0 in float32 for any
  score range wider than ~104. Masks must be 0/1 (Hugging Face's convention).
- **Gelu** (only when ``gelu_tanh``: Ethos-U runs GELU in 8 bits only) -> the tanh form
  ``x · (0.5 + 0.5·tanh(x·(k + k·0.044715·x²)))``, k = √(2/π), as Mul/Add/Tanh: within 3e-4 of
  the erf form, far below a 16-bit step of BERT's GELU outputs.

The rewrite is exact in float except for those two documented approximations (mask floor, tanh
GELU); ``to_integer_form`` returns what it changed so the caller can record it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qexport.errors import IRError
from qexport.ir.graph import Graph, Node, ValueInfo
from qexport.ir.ops import Op

MASK_FLOOR = -10000.0
LAYOUT_OPS = frozenset({Op.RESHAPE, Op.TRANSPOSE, Op.SQUEEZE, Op.UNSQUEEZE, Op.SLICE})
"""Ops that move values without changing them: their output crosses with the input's params
(TFLite requires it of RESHAPE, TRANSPOSE, SLICE)."""
_ELEMENTWISE = {Op.ADD: np.add, Op.SUB: np.subtract, Op.MUL: np.multiply}
PRESCALES = ("root_peak", "peak")
"""The LayerNorm's per-token factor: ``1/sqrt(peak)`` for 16 bits (tokens within ~4x of each
other; integer rsqrt kernels are coarse on the small integers a squared range would leave),
``1/peak`` for 8 bits (every token within [-1, 1], so its squares are whole int8 steps)."""


def is_full_integer(graph: Graph) -> bool:
    """The graph was quantized by the ``integer`` scheme: every value between ops has a spec."""
    recipe = graph.metadata.get("recipe")
    return isinstance(recipe, dict) and recipe.get("scheme") == "integer"


def to_integer_form(
    graph: Graph, *, prescale: str = "root_peak", channel_scales: dict[str, str] | None = None
) -> dict[str, list[str]]:
    """Rewrite the mask and every LayerNorm of ``graph`` in place (see the module docstring).
    ``prescale`` (``PRESCALES``) picks the LayerNorm's per-token factor; ``channel_scales``
    (LayerNorm name -> constant ``d``, from ``qexport.ir.residual_scale``) says which read a
    channel-scaled sum. Returns ``masks`` (the mask lookups' output values) and ``layer_norms``
    (node names)."""
    if prescale not in PRESCALES:
        raise IRError(f"prescale {prescale!r}: choose one of {', '.join(PRESCALES)}")
    form: dict[str, list[str]] = {"masks": _mask_tables(graph), "layer_norms": []}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op is Op.LAYER_NORM:
            nodes += _layer_norm(graph, node, prescale, (channel_scales or {}).get(node.name))
            form["layer_norms"].append(node.name)
        else:
            nodes.append(node)
    graph.nodes = nodes
    graph.validate()
    return form


def gelus_as_tanh(graph: Graph, names: set[str]) -> None:
    """Rewrite the Gelu nodes named in ``names`` into the tanh form (module docstring)."""
    nodes: list[Node] = []
    for node in graph.nodes:
        nodes += _gelu_tanh(graph, node) if node.op is Op.GELU and node.name in names else [node]
    graph.nodes = nodes
    graph.validate()


class _Emitter:
    """Appends nodes named ``<base>.<part>`` whose float outputs have ``info``'s shape."""

    def __init__(self, graph: Graph, base: str, info: ValueInfo) -> None:
        self.graph, self.base, self.info = graph, base, info
        self.nodes: list[Node] = []

    def const(self, part: str, value: np.ndarray | float) -> str:
        name = f"{self.base}.{part}"
        self.graph.constants[name] = np.asarray(value, np.float32)
        return name

    def op(self, op: Op, inputs: list[str], part: str, *, out: str = "", shape=None, **attrs) -> str:
        name = out or f"{self.base}.{part}"
        self.graph.values[name] = ValueInfo("float32", tuple(shape) if shape is not None else self.info.shape)
        self.nodes.append(Node(f"{self.base}.{part}", op, inputs, [name], attrs))
        return name


def _layer_norm(graph: Graph, node: Node, prescale: str, channel_scale: str | None) -> list[Node]:
    if int(node.attrs["num_axes"]) != 1:
        raise IRError(f"LayerNorm {node.name!r}: the integer form normalizes over the last axis only")
    x, weight, bias = ([*node.inputs, "", ""])[:3]
    info = graph.values[node.outputs[0]]
    reduced = (*info.shape[:-1], 1)
    e = _Emitter(graph, node.name, info)
    # LayerNorm is invariant to a positive per-token scale: divide each token by a power of its
    # peak max|x| first, so tokens with 200x larger variance (BERT's outlier tokens) share one
    # range with the others (PRESCALES). A channel-scaled input x' (x = x'·d) is multiplied
    # back after the division, so no tensor holds the outlier tokens' full range.
    magnitude = e.op(Op.ABS, [x], "magnitude")
    if channel_scale:
        magnitude = e.op(Op.MUL, [magnitude, channel_scale], "magnitude_unscaled")
    peak = e.op(Op.REDUCE_MAX, [magnitude], "peak", shape=reduced, axes=[-1], keepdims=True)
    factor = e.op(Op.RSQRT, [peak], "inverse_root_peak", shape=reduced)
    if prescale == "peak":
        factor = e.op(Op.MUL, [factor, factor], "inverse_peak", shape=reduced)
    if channel_scale:
        x = e.op(Op.MUL, [x, factor], "prescaled_scaled")
        x = e.op(Op.MUL, [x, channel_scale], "prescaled")
    else:
        x = e.op(Op.MUL, [x, factor], "prescaled")
    mean = e.op(Op.REDUCE_MEAN, [x], "mean", shape=reduced, axes=[-1], keepdims=True)
    centred = e.op(Op.SUB, [x, mean], "centred")
    square = e.op(Op.MUL, [centred, centred], "square")
    variance = e.op(Op.REDUCE_MEAN, [square], "variance", shape=reduced, axes=[-1], keepdims=True)
    eps = float(np.float32(node.attrs["eps"]))
    if eps >= 1e-6:
        variance = e.op(Op.ADD, [variance, e.const("eps", eps)], "variance_eps", shape=reduced)
    rstd = e.op(Op.RSQRT, [variance], "rstd", shape=reduced)
    steps = [("normalized", rstd), ("scaled", weight), ("shifted", bias)]
    steps = [(part, operand) for part, operand in steps if operand]
    y = centred
    for i, (part, operand) in enumerate(steps):
        op = Op.ADD if part == "shifted" else Op.MUL
        last = i == len(steps) - 1
        y = e.op(op, [y, operand], part, out=node.outputs[0] if last else "")
    return e.nodes


def _gelu_tanh(graph: Graph, node: Node) -> list[Node]:
    x = node.inputs[0]
    e = _Emitter(graph, node.name, graph.values[node.outputs[0]])
    k = float(np.sqrt(2.0 / np.pi))
    square = e.op(Op.MUL, [x, x], "square")
    slope = e.op(Op.MUL, [square, e.const("cubic", k * 0.044715)], "slope_x2")
    slope = e.op(Op.ADD, [slope, e.const("linear", k)], "slope")
    inner = e.op(Op.MUL, [x, slope], "inner")
    t = e.op(Op.TANH, [inner], "tanh")
    half = e.op(Op.MUL, [t, e.const("half", 0.5)], "half_tanh")
    gate = e.op(Op.ADD, [half, e.const("offset", 0.5)], "gate")
    e.op(Op.MUL, [x, gate], "gated", out=node.outputs[0])
    return e.nodes


def _mask_tables(graph: Graph) -> list[str]:
    """Replace each ``Cast(int input) -> elementwise ops with scalar constants`` chain by a
    Gather from a 2-entry table (the module docstring). Returns the Gathers' output values."""
    producer, consumers = graph.producer(), graph.consumers()
    replaced: list[str] = []
    for cast in [n for n in graph.nodes if n.op is Op.CAST]:
        if not _from_integer_input(graph, cast.inputs[0], producer):
            continue
        chain: list[tuple[Callable, np.ndarray, bool]] = []  # (fn, constant, constant-is-left)
        end, dead = cast.outputs[0], [cast]
        while len(consumers.get(end, [])) == 1:
            nxt = consumers[end][0]
            if nxt.op not in _ELEMENTWISE or len(nxt.inputs) != 2:
                break
            other = nxt.inputs[1] if nxt.inputs[0] == end else nxt.inputs[0]
            value = graph.constants.get(other)
            if value is None or value.size != 1:
                break
            chain.append((_ELEMENTWISE[nxt.op], value.reshape(()).astype(np.float32), nxt.inputs[0] == other))
            end, dead = nxt.outputs[0], [*dead, nxt]
        if not chain:
            continue
        table = np.array([0.0, 1.0], np.float32)
        for fn, value, left in chain:
            table = (fn(value, table) if left else fn(table, value)).astype(np.float32)
        table = np.maximum(table, np.float32(MASK_FLOOR))
        table_name = f"{cast.name}.table"
        graph.constants[table_name] = table
        # look up on the input itself, then move the looked-up values as the mask was moved:
        # integer tensors without quantization params then never appear in the file
        moves: list[Node] = []
        root = cast.inputs[0]
        while root in producer and producer[root].op in LAYOUT_OPS:
            moves.insert(0, producer[root])
            root = producer[root].inputs[0]
        looked_up = end if not moves else f"{cast.name}.lookup"
        new = [Node(f"{cast.name}.lookup", Op.GATHER, [table_name, root], [looked_up])]
        if moves:
            graph.values[looked_up] = ValueInfo("float32", graph.inputs[root].shape)
        for i, move in enumerate(moves):
            out = end if i == len(moves) - 1 else f"{move.outputs[0]}.lookup"
            if out != end:
                graph.values[out] = ValueInfo("float32", graph.values[move.outputs[0]].shape)
            new.append(Node(f"{move.name}.lookup", move.op, [new[-1].outputs[0]], [out], dict(move.attrs)))
        at = graph.nodes.index(cast)
        graph.nodes = [n for n in graph.nodes if all(n is not d for d in dead)]
        graph.nodes[at:at] = new
        for d in dead[:-1]:
            graph.values.pop(d.outputs[0], None)
        _drop_unread(graph)
        replaced.append(end)
        producer, consumers = graph.producer(), graph.consumers()
    return replaced


def _drop_unread(graph: Graph) -> None:
    """Remove nodes whose outputs nothing reads (the mask's integer moves, once looked up)."""
    while True:
        read = {v for n in graph.nodes for v in n.inputs} | set(graph.outputs.values())
        dead = [n for n in graph.nodes if not any(o in read for o in n.outputs)]
        if not dead:
            return
        for node in dead:
            graph.nodes.remove(node)
            for out in node.outputs:
                graph.values.pop(out, None)


def _from_integer_input(graph: Graph, value: str, producer: dict[str, Node]) -> bool:
    """``value`` is an integer graph input, possibly moved by layout ops."""
    while value in producer and producer[value].op in LAYOUT_OPS:
        value = producer[value].inputs[0]
    return value in graph.inputs and graph.inputs[value].dtype.startswith(("int", "uint"))
