"""The labeled task of ``benchmarks/task.py``: a fixed split and a deterministic head."""

from __future__ import annotations

import numpy as np

from benchmarks.task import load_task, top1, train_head


def test_the_task_is_24_modules_with_a_fixed_held_out_third():
    texts, labels, test, classes = load_task()
    assert len(classes) == 24 and len(texts) == 969 and len(set(texts)) == len(texts)
    assert np.bincount(labels).min() >= 19
    assert 300 <= int(test.sum()) <= 330  # every third sentence of each module
    excluded = set(texts[:40])
    _, _, fewer, _ = load_task(excluded)
    assert not any(fewer[i] for i, t in enumerate(texts) if t in excluded)  # calibration text
    assert fewer.sum() < test.sum()


def test_the_head_separates_separable_classes_and_is_deterministic():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    y = np.repeat(np.arange(5), 40)
    x = centres[y] + 0.1 * rng.normal(size=(200, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    head = train_head(x, y, 5)
    assert top1(head, x, y) == 100.0
    assert np.array_equal(head, train_head(x, y, 5))


def test_the_learning_text_holds_no_held_out_or_task_test_sentence():
    from pathlib import Path

    from benchmarks.learn import learn_text
    from qexport.frontend.text import read_lines

    doc = read_lines(Path(__file__).resolve().parents[1] / "fixtures" / "docstring_sentences.txt")
    texts, _, test, _ = load_task(set(doc[:128]))
    text = learn_text()
    assert text[:128] == doc[:128] and len(text) > 3000
    assert not set(text) & set(doc[128:])  # the sentences every benchmark and test evaluates on
    assert not set(text) & {t for t, is_test in zip(texts, test, strict=True) if is_test}
