"""ONNX: a torch step module exported to an ONNX model, and ONNX Runtime sessions to run it.

This module knows ONNX and ONNX Runtime (the optional [onnx] extra), and nothing of charnn's
models or run directories: it exports whatever one-step module it is given (steps.py builds
it), records the SHA-256 of the weights in the model's metadata, and opens sessions, from a
cache file when the caller names one and it matches the weights. May import errors and files.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from charnn.errors import CharnnError
from charnn.files import atomic_write

DIGEST_KEY = "charnn_weights_sha256"


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def require_onnx() -> None:
    """A CharnnError naming the extra to install, unless ONNX and ONNX Runtime are there."""
    if not onnx_available():
        raise CharnnError(
            "the onnx backend and --quantize int8 need onnx, onnxscript and onnxruntime: "
            "pip install 'charnn[onnx]'"
        )


def export_onnx(module: nn.Module, state: list[torch.Tensor], quantize: str = "none", digest: str = "") -> bytes:
    """`module(ids (B,), *state) -> (logits, *state)` as an ONNX model (bytes), batch dynamic.

    `state` is an example of the state tensors (batch 2). `digest` (the SHA-256 of the
    weights) is recorded in the model's metadata so that a cached export is never used with
    other weights; quantize="int8" quantises the weights dynamically.
    """
    require_onnx()
    # The exporter and the quantiser log advice meant for other models (torchvision ops,
    # pre-processing for convolutions); keep the user's terminal clean.
    logging.disable(logging.WARNING)
    try:
        return _export(module, state, quantize, digest)
    finally:
        logging.disable(logging.NOTSET)


def _export(module: nn.Module, state: list[torch.Tensor], quantize: str, digest: str) -> bytes:
    """export_onnx's work, with logging already quietened."""
    import onnx

    names = [f"state{i}" for i in range(len(state))]
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (torch.zeros(2, dtype=torch.long), *state), dynamo=True, verbose=False,
            input_names=["ids", *names], output_names=["logits", *[f"{n}_out" for n in names]],
            dynamic_shapes=({0: batch}, tuple({1: batch} for _ in state)),
        )
    model = program.model_proto
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(model, src)
            # Per-channel weight scales keep the int8 rounding error small for every gate row.
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
            model = onnx.load(dst)
    onnx.helper.set_model_props(model, {DIGEST_KEY: digest, "charnn_quantize": quantize})
    return model.SerializeToString()


def onnx_digest(data: bytes) -> str | None:
    """The weights digest recorded in an exported model (None if it has none)."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception:  # a torn or foreign file: treat as absent
        return None
    return {p.key: p.value for p in model.metadata_props}.get(DIGEST_KEY)


def onnx_session(data: bytes):
    """An ONNX Runtime session for an exported step, on the CPU with torch's thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def cached_session(export: Callable[[], bytes], cache: Path | None = None, digest: str = ""):
    """A session for the export of weights `digest`: from `cache` if it holds that export,
    else `export()` now (and written to `cache` when possible, so the next load is instant)."""
    require_onnx()
    if cache is not None and digest and cache.is_file():
        data = cache.read_bytes()
        if onnx_digest(data) == digest:
            return onnx_session(data)
    data = export()
    if cache is not None and digest:
        try:
            atomic_write(cache, data)
        except OSError:
            pass  # a read-only run directory: the export stays in memory
    return onnx_session(data)
