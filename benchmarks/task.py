"""Task accuracy of every recipe's files, with and without ``--learn``, on all-MiniLM-L6-v2.

BERT quantization results are reported as task accuracy ("92.5 % -> 91.8 %"); SQNR alone does
not say what a user loses. The task is built from data the project ships:
``fixtures/docstring_modules.tsv`` (``scripts/harvest_sentences.py --task``) holds 969
standard-library docstring sentences labeled with their module (24 modules). Every third
sentence of each module is held out for testing (calibration sentences are kept out of the
test split); a softmax-regression head on the L2-normalised mean-pooled embedding is trained
once on fp32 features of the rest, then every artifact's test features go through that head.

    python -m benchmarks.task                      # every recipe, ~8 min each on 2 cores
    python -m benchmarks.task int16x8 npu-int8     # only these rows, merged into the last results

Writes benchmarks/results/task.{json,md}; ``runs`` in the JSON says which run measured which rows.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.learn import BACKENDS, RECIPES  # the same recipes and files as the SQNR table
from benchmarks.measure import cpu_description, minilm_texts, pooled, write_results

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "fixtures" / "docstring_modules.tsv"


def load_task(exclude: set[str] = frozenset()) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(sentences, labels, test mask, class names): every third sentence of a module is a test
    one, unless it is in ``exclude`` (the calibration text), which stays in training."""
    rows = [line.split("\t", 1) for line in TASK.read_text(encoding="utf-8").splitlines() if line]
    classes = sorted({m for m, _ in rows})
    seen: dict[str, int] = {}
    texts, labels, test = [], [], []
    for module, sentence in rows:
        index = seen.get(module, 0)
        seen[module] = index + 1
        texts.append(sentence)
        labels.append(classes.index(module))
        test.append(index % 3 == 2 and sentence not in exclude)
    return texts, np.array(labels), np.array(test), classes


def features(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The sentence embedding all-MiniLM-L6-v2 is trained for: mean-pooled, L2-normalised."""
    x = pooled(hidden, mask).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def train_head(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 500, l2: float = 1e-3) -> np.ndarray:
    """Softmax regression by full-batch gradient descent (deterministic): weights [d + 1, classes]."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros((xb.shape[1], classes))
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        logits = xb @ w
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        w -= 20.0 * (xb.T @ (p - onehot) / len(x) + l2 * w)
    return w


def predict(head: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.argmax(np.hstack([x, np.ones((len(x), 1))]) @ head, 1)


def top1(head: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return round(100.0 * float(np.mean(predict(head, x) == y)), 2)


def run(recipes: tuple[str, ...] = RECIPES) -> dict[str, Any]:
    import qexport
    from benchmarks.learn import learn_text
    from qexport import backends
    from qexport.frontend.text import read_lines, tokenize
    from qexport.learn import for_ranges, learn
    from qexport.quant.calibration import load_calibration
    from qexport.quant.engine import quantize_graph
    from qexport.quant.recipe import resolve
    from qexport.reference.executor import run as reference

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    model_dir, calib_inputs, _ = minilm_texts(1)
    calibration_text = set(read_lines(ROOT / "fixtures" / "docstring_sentences.txt")[:128])
    texts, labels, test, classes = load_task(calibration_text)
    graph = qexport.capture(model_dir)
    inputs = tokenize(texts, model_dir, 128, list(graph.inputs))
    held = {k: v[test] for k, v in inputs.items()}
    calib = load_calibration(graph, calib_inputs, seq_len=128, tokenizer_dir=None)
    text = tokenize(learn_text(), model_dir, 128, list(graph.inputs))  # no test sentence in it
    learning = load_calibration(graph, text, seq_len=128, tokenizer_dir=None, learning=True)

    def embed(fn: Any, data: dict[str, np.ndarray]) -> np.ndarray:
        parts = []
        for start in range(0, len(data["input_ids"]), 50):
            chunk = {k: v[start : start + 50] for k, v in data.items()}
            parts.append(features(fn(chunk)["last_hidden_state"], chunk["attention_mask"]))
        return np.concatenate(parts)

    fp32_train = embed(
        lambda c: reference(graph, c, simulate=False), {k: v[~test] for k, v in inputs.items()}
    )
    head = train_head(fp32_train, labels[~test], len(classes))
    y = labels[test]
    fp32_test = embed(lambda c: reference(graph, c, simulate=False), held)
    fp32_says = predict(head, fp32_test)

    def scores(x: np.ndarray) -> dict[str, float]:
        """top-1 accuracy, and how often the prediction is fp32's (the finer measure: one test
        sentence is 0.36 points of accuracy, and flips in both directions cancel there)."""
        same = round(100.0 * float(np.mean(predict(head, x) == fp32_says)), 2)
        return {"top1": top1(head, x, y), "agrees_with_fp32": same}

    rows: list[dict[str, Any]] = [
        {"recipe": "fp32", "learn": False, "file": "IR (float)", **scores(fp32_test)}
    ]
    print(f"fp32: {rows[-1]['top1']} % (train {top1(head, fp32_train, labels[~test])} %)", file=sys.stderr)
    for name in recipes:
        recipe = resolve(name)
        plain = quantize_graph(graph, recipe, calib)
        start = time.monotonic()
        wanted = replace(recipe, learn=True)
        learned = learn(graph, quantize_graph(graph, wanted, for_ranges(learning)), wanted, learning)
        seconds = round(time.monotonic() - start, 1)
        for flag, ir in ((False, plain), (True, learned)):
            rows.append(
                {
                    "recipe": name,
                    "learn": flag,
                    "file": "IR (simulated)",
                    **scores(embed(lambda c, ir=ir: reference(ir, c), held)),
                    "learn_seconds": seconds if flag else None,
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                for target in BACKENDS:
                    backend = backends.get(target)
                    path = Path(tmp) / f"model{backend.suffix}"
                    try:
                        backend.lower(ir, path)
                        result: dict[str, Any] = scores(embed(lambda c, b=backend, p=path: b.run(p, c), held))
                    except Exception as exc:  # reported as it is: a recipe a backend cannot run
                        result = {"top1": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
                    rows.append({"recipe": name, "learn": flag, "file": target, **result})
                    print(rows[-1], file=sys.stderr, flush=True)
    run_facts = {
        "started": started,
        "ended": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "recipes": list(recipes),
    }
    return {
        "cpu": cpu_description(),
        "runs": [run_facts],
        "task": {
            "classes": len(classes),
            "train": int((~test).sum()),
            "test": int(test.sum()),
            "chance_top1": round(100.0 * float(np.bincount(y).max() / len(y)), 2),
        },
        "rows": rows,
    }


def to_markdown(result: dict[str, Any]) -> str:
    task = result["task"]
    fp32 = next(r["top1"] for r in result["rows"] if r["recipe"] == "fp32")
    lines = [
        f"# Task accuracy on all-MiniLM-L6-v2 ({result['cpu']})",
        "",
        f"Which of {task['classes']} standard-library modules a docstring sentence comes from: a "
        f"softmax head trained once on fp32 embeddings of {task['train']} sentences, top-1 on "
        f"{task['test']} held-out ones (majority class {task['chance_top1']} %). Calibration on 128 "
        "other docstring sentences, `--learn` on `benchmarks.learn.learn_text` (those, the task's "
        "training sentences and qexport's learning text). Each cell: top-1 % (points against fp32) / % of "
        "test sentences predicted as fp32 predicts them.",
        "",
        f"fp32: **{fp32:.2f} %**",
        "",
        "| recipe | learn | IR | onnx | tflite | torch |",
        "|---|---|---|---|---|---|",
    ]
    table: dict[tuple[str, bool], dict[str, Any]] = {}
    for r in result["rows"]:
        if r["recipe"] != "fp32":
            table.setdefault((r["recipe"], r["learn"]), {})[r["file"]] = r

    def cell(row: dict[str, Any]) -> str:
        value = row["top1"]
        if not isinstance(value, float):
            return f"fails: {value}"
        return f"{value:.2f} ({value - fp32:+.2f}) / {row['agrees_with_fp32']:.1f}"

    for (recipe, flag), files in table.items():
        cells = [cell(files.get(k)) for k in ("IR (simulated)", *BACKENDS)]
        lines.append(f"| {recipe} | {'yes' if flag else 'no'} | " + " | ".join(cells) + " |")
    lines.append("")
    for facts in result.get("runs", []):
        lines.append(
            f"- {facts['started']} – {facts['ended']}: {', '.join(facts['recipes'])}"
            + (f", on {facts['cpu']}" if facts.get("cpu") else "")
            + (f" ({facts['note']})" if facts.get("note") else "")
        )
    return "\n".join(lines) + "\n"


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with the rows of ``new``'s recipes replaced (same task, same fp32). Rows from
    another CPU are merged and their run says which: accuracy does not depend on it."""
    if old.get("task") != new["task"]:
        raise SystemExit("the last results were taken with another task; run every recipe")
    if old.get("cpu") != new["cpu"]:
        new["runs"][0]["cpu"] = new["cpu"]
    fp32 = [r for r in new["rows"] if r["recipe"] == "fp32"]
    if [r for r in old["rows"] if r["recipe"] == "fp32"] != fp32:
        raise SystemExit("fp32's accuracy differs from the last results'; run every recipe")
    measured = set(new["runs"][0]["recipes"])
    rows = fp32 + [
        r for name in RECIPES for r in (new if name in measured else old)["rows"] if r["recipe"] == name
    ]
    return {**old, "rows": rows, "runs": [*old.get("runs", []), *new["runs"]]}


def main() -> None:
    wanted = tuple(sys.argv[1:])
    unknown = [name for name in wanted if name not in RECIPES]
    if unknown:
        raise SystemExit(
            f"unknown recipe {', '.join(unknown)}; the benchmark's recipes: {', '.join(RECIPES)}"
        )
    result = run(wanted or RECIPES)
    if wanted:
        last = Path(__file__).parent / "results" / "task.json"
        result = merge(json.loads(last.read_text()), result)
    write_results("task", result, to_markdown(result))


if __name__ == "__main__":
    main()
