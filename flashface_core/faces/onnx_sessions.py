"""Cached onnxruntime sessions for the ONNX face models (onnxruntime imported when a model first runs)."""
from __future__ import annotations

import logging
from functools import lru_cache

log = logging.getLogger(__name__)

# Accelerators worth using when the installed onnxruntime has them; TensorRT is left out because it
# compiles an engine on first use, which costs more than these small models ever save.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider",
                       "CoreMLExecutionProvider", "CPUExecutionProvider")


@lru_cache(maxsize=16)
def onnx_session(model: str | bytes, threads: int = 0):
    """An inference session for a model file path or serialized model; `threads` 0 = onnxruntime's default."""
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise ImportError(
            "the ONNX face models need onnxruntime: pip install onnxruntime (or onnxruntime-gpu)"
        ) from error
    available = set(ort.get_available_providers())
    providers = [p for p in PREFERRED_PROVIDERS if p in available]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # keep onnxruntime's own warnings out of the ComfyUI console
    name = model if isinstance(model, str) else "<embedded model>"
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for unreadable models
        raise RuntimeError(
            f"onnxruntime could not load the face model {name}: {error}. The file is damaged or not an "
            "ONNX model; download it again"
        ) from error
    log.debug("onnxruntime session %s on %s", name, session.get_providers())
    return session
