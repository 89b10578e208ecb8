"""Calibration data: resolve what the user gave into model inputs, then observe activations.

Data comes from a text file (tokenized with the model's tokenizer), an ``.npz`` of named
arrays, a dict of arrays, or — when nothing is given — the built-in sentences with a warning
(for ``--learn``, the larger built-in learning text: fitting weights needs thousands of samples).
Observers see real activations: infinities (attention masks) are ignored, NaN is an error.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qexport.errors import QExportError
from qexport.ir.graph import Graph
from qexport.ir.inputs import complete_inputs
from qexport.reference.executor import run

FALLBACK_TEXT = Path(__file__).resolve().parents[1] / "data" / "calibration_sentences.txt"
# 2561 standard-library docstring sentences (scripts/harvest_sentences.py --learn)
LEARN_TEXT = Path(__file__).resolve().parents[1] / "data" / "learn_sentences.txt"
LEARN_ENOUGH = 1000  # below this many samples, --learn fits MiniLM's layers to them (docs/learning.md)


class CalibrationError(QExportError):
    """Calibration data is missing, malformed or produced NaN."""


@dataclass
class CalibrationSet:
    """Model inputs with a leading sample axis, and where they came from."""

    inputs: dict[str, np.ndarray]
    origin: str
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, count: int) -> CalibrationSet:
        """The first ``count`` samples (all of them if there are fewer)."""
        if self.size <= count:
            return self
        return CalibrationSet({k: v[:count] for k, v in self.inputs.items()}, self.origin, self.warnings)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.inputs):
            digest.update(name.encode() + np.ascontiguousarray(self.inputs[name]).tobytes())
        return digest.hexdigest()[:16]


def check_arrays(graph: Graph, arrays: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Calibration arrays name the graph's inputs (optional ones may be left out), as [samples, seq] integers."""
    names = list(graph.inputs)
    defaults = graph.metadata.get("input_defaults", {})
    if "input_ids" in arrays and set(arrays) <= set(names):
        arrays = complete_inputs(arrays, names, defaults, where)
    if sorted(arrays) != sorted(names):
        raise CalibrationError(f"{where}: arrays are named {sorted(arrays)}, the model takes {names}")
    result: dict[str, np.ndarray] = {}
    shape = None
    for name in names:
        array = np.asarray(arrays[name])
        want = graph.inputs[name]
        if array.ndim != len(want.shape) or array.dtype.kind not in "iub":
            raise CalibrationError(
                f"{where}: {name} has shape {list(array.shape)} dtype {array.dtype}; "
                f"expected integer [samples, seq] like the model input {list(want.shape)}"
            )
        if shape is not None and array.shape != shape:
            raise CalibrationError(f"{where}: {name} has shape {list(array.shape)}, others {list(shape)}")
        shape = array.shape
        result[name] = array.astype(want.dtype)
    if not shape or shape[0] == 0:
        raise CalibrationError(f"{where}: no samples")
    return result


def load_calibration(
    graph: Graph,
    data: str | Path | Mapping[str, np.ndarray] | None,
    *,
    seq_len: int,
    tokenizer_dir: Path | None,
    learning: bool = False,
) -> CalibrationSet:
    """Resolve ``data`` into a CalibrationSet (see module docstring); ``learning``: the set is
    also what ``--learn`` fits to (another default text, and a warning when it is small)."""
    calib = _resolve(graph, data, seq_len=seq_len, tokenizer_dir=tokenizer_dir, learning=learning)
    if learning and calib.size < LEARN_ENOUGH:
        calib.warnings.append(
            f"--learn on {calib.size} calibration samples can fit them rather than the model; "
            f"give at least {LEARN_ENOUGH} representative examples"
        )
    return calib


def _resolve(
    graph: Graph,
    data: str | Path | Mapping[str, np.ndarray] | None,
    *,
    seq_len: int,
    tokenizer_dir: Path | None,
    learning: bool,
) -> CalibrationSet:
    if isinstance(data, Mapping):
        return CalibrationSet(check_arrays(graph, data, "calibration arrays"), "arrays")
    warnings: list[str] = []
    if data is None and tokenizer_dir is None:
        return CalibrationSet(
            random_tokens(graph, seq_len),
            "random-tokens",
            ["no --calib and no tokenizer: calibrated on random token ids; give representative data"],
        )
    if data is None:
        path = LEARN_TEXT if learning else FALLBACK_TEXT
        warnings.append(
            f"no --calib given: {'learned' if learning else 'calibrated'} on qexport's built-in sentences; "
            "give representative data for best accuracy"
        )
    else:
        path = Path(data)
    if not path.exists():
        raise CalibrationError(f"{path}: no such calibration file")
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise CalibrationError(f"{path}: not a readable .npz ({exc})") from None
        return CalibrationSet(check_arrays(graph, arrays, str(path)), f"npz:{path.name}", warnings)
    from qexport.frontend.text import read_lines, tokenize

    try:
        lines = read_lines(path)
    except QExportError as exc:
        raise CalibrationError(str(exc)) from None
    if tokenizer_dir is None:
        raise CalibrationError(
            f"{path}: text calibration needs a tokenizer; pass --tokenizer DIR (the source has none)"
        )
    arrays = tokenize(lines, tokenizer_dir, seq_len, list(graph.inputs))
    return CalibrationSet(arrays, f"text:{path.name} ({len(lines)} lines)", warnings)


def random_tokens(graph: Graph, seq_len: int, samples: int = 16) -> dict[str, np.ndarray]:
    """Deterministic random token ids (vocab taken from the table input_ids indexes), full mask."""
    vocab = 2
    for node in graph.nodes:
        if "input_ids" in node.inputs[1:] and node.inputs[0] in graph.constants:
            vocab = graph.constants[node.inputs[0]].shape[0]
    rng = np.random.default_rng(0)
    arrays = {}
    for name in graph.inputs:
        if name == "input_ids":
            arrays[name] = rng.integers(1, max(vocab, 2), (samples, seq_len))
        elif name == "attention_mask":
            arrays[name] = np.ones((samples, seq_len), np.int64)
        else:
            arrays[name] = np.zeros((samples, seq_len), np.int64)
    return {k: v.astype(graph.inputs[k].dtype) for k, v in arrays.items()}


@dataclass
class ChannelStats:
    """Running per-channel (last axis) min and max of one tensor; with ``peaks``, also the
    lowest peak of a row (the smallest max over the last axis: what a softmax over that axis is
    relative to)."""

    lo: np.ndarray
    hi: np.ndarray
    peaks: bool = False
    lowest_peak: float = float("inf")

    def update(self, x: np.ndarray) -> None:
        flat = x.reshape(-1, x.shape[-1])
        finite = np.where(np.isfinite(flat), flat, np.nan)
        self.lo = np.fmin(self.lo, np.nanmin(finite, axis=0))
        self.hi = np.fmax(self.hi, np.nanmax(finite, axis=0))
        if self.peaks:
            self.lowest_peak = min(self.lowest_peak, float(np.nanmin(np.nanmax(finite, axis=1))))


def observe_channels(
    graph: Graph,
    calib: CalibrationSet,
    values: Iterable[str],
    *,
    batch: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
    row_peaks: Container[str] = (),
) -> dict[str, ChannelStats]:
    """Per-channel min/max of ``values`` over the calibration set (float execution), and the
    lowest row peak of those in ``row_peaks``."""
    wanted = list(values)
    stats: dict[str, ChannelStats] = {}
    total = calib.size
    for start in range(0, total, batch):
        chunk = {k: v[start : start + batch] for k, v in calib.inputs.items()}
        env = run(graph, chunk, simulate=False, keep=wanted)
        for name in wanted:
            x = env[name]
            if np.isnan(x).any():
                raise CalibrationError(
                    f"tensor {name!r} is NaN on calibration sample {start}+; check the model and data"
                )
            if name not in stats:
                channels = x.shape[-1]
                stats[name] = ChannelStats(
                    np.full(channels, np.inf, np.float32),
                    np.full(channels, -np.inf, np.float32),
                    peaks=name in row_peaks,
                )
            stats[name].update(x)
        if on_batch is not None:
            on_batch(min(start + batch, total), total)
    return stats


def collect_samples(
    graph: Graph, calib: CalibrationSet, values: Iterable[str], *, batch: int = 8, limit: int = 1 << 20
) -> dict[str, np.ndarray]:
    """Finite values of each tensor (strided subsample up to ``limit``) for percentile / MSE."""
    wanted = list(values)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
    for start in range(0, calib.size, batch):
        chunk = {k: v[start : start + batch] for k, v in calib.inputs.items()}
        env = run(graph, chunk, simulate=False, keep=wanted)
        for name in wanted:
            flat = env[name].ravel()
            parts[name].append(flat[np.isfinite(flat)])
    result = {}
    for name, chunks in parts.items():
        flat = np.concatenate(chunks)
        step = max(1, flat.size // limit)
        result[name] = flat[::step]
    return result
