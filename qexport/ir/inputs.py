"""Model inputs a caller may leave out, and the value each takes then.

A BERT-family model defaults its attention mask to "every token is real" and its token types
to segment 0. The IR keeps every input the source accepts (so every artifact has one
signature), and records these defaults in ``metadata["input_defaults"]``; whoever runs the IR
or an artifact for a caller (calibration, the reference executor, ``check``) fills the missing
ones with :func:`complete_inputs`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qexport.errors import QExportError

SOURCE_DEFAULTS = {"attention_mask": 1, "token_type_ids": 0}


def defaults_for(input_names: list[str]) -> dict[str, int]:
    """The defaults of the optional inputs among ``input_names``."""
    return {name: SOURCE_DEFAULTS[name] for name in input_names if name in SOURCE_DEFAULTS}


def complete_inputs(
    inputs: Mapping[str, np.ndarray], names: list[str], defaults: Mapping[str, int], where: str = "inputs"
) -> dict[str, np.ndarray]:
    """``inputs`` plus every input of ``names`` it leaves out that has a default (shaped like input_ids)."""
    result = dict(inputs)
    missing = [n for n in names if n not in result]
    if not missing:
        return result
    required = [n for n in missing if n not in defaults]
    if required or "input_ids" not in result:
        raise QExportError(
            f"{where}: missing {required or ['input_ids']}; the model takes {names} "
            f"(optional, with defaults: {sorted(defaults)})"
        )
    ids = np.asarray(result["input_ids"])
    for name in missing:
        result[name] = np.full(ids.shape, defaults[name], dtype=ids.dtype)
    return result
