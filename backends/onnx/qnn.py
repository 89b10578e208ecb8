"""Qualcomm's HTP through onnxruntime's QNN execution provider (PyPI ``onnxruntime-qnn``).

The x86-64 wheel ships the HTP backend as a simulator, so a file's placement and numerics can
be tested here. ``htp_session`` opens a file with the CPU fallback disabled: session creation
fails unless every node runs on QNN. It is the few lines a user writes (README, "--for npu").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qexport.errors import QExportError


def htp_session(path: Path, *, strict: bool = True, log_level: int = 3) -> Any:
    """An InferenceSession on the HTP backend; ``strict``: no node may fall back to the CPU."""
    import onnxruntime as ort

    try:
        import onnxruntime_qnn as qnn
    except ImportError:
        raise QExportError("the HTP backend needs onnxruntime-qnn (pip install onnxruntime-qnn)") from None
    if qnn.EP_NAME not in {d.ep_name for d in ort.get_ep_devices()}:
        ort.register_execution_provider_library(qnn.EP_NAME, qnn.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == qnn.EP_NAME]
    options = ort.SessionOptions()
    options.log_severity_level = log_level
    if strict:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.add_provider_for_devices(devices, {"backend_path": qnn.get_qnn_htp_path()})
    return ort.InferenceSession(str(path), options)
