"""Text -> model inputs with the model's own tokenizer (local files only, no custom code)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qexport.errors import QExportError


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file; clear errors for empty or non-UTF-8 files."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise QExportError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise QExportError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise QExportError(f"{path}: no text lines; give one example per line")
    return lines


def tokenize(
    lines: Sequence[str], tokenizer_dir: Path, seq_len: int, input_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Pad/truncate to ``seq_len``; returns int64 arrays [len(lines), seq_len] per input name."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(
            str(tokenizer_dir), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise QExportError(f"{tokenizer_dir}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from None
    enc = tok(list(lines), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    result: dict[str, np.ndarray] = {}
    for name in input_names:
        if name == "token_type_ids" and name not in enc:
            result[name] = np.zeros((len(lines), seq_len), np.int64)
        elif name not in enc:
            raise QExportError(f"the tokenizer in {tokenizer_dir} does not produce {name!r}")
        else:
            result[name] = np.asarray(enc[name], dtype=np.int64)
    return result
