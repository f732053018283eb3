"""ONNX export of a registered model or a checkpoint, with an onnxruntime parity check and latency beside eager.

The exported graph is the model with the traceable ``"torch"`` selective-scan backend (the fused CPU kernel and the
GPU kernels are not ONNX operators), traced at one fixed input shape (batch, channels, H, W). Exporters:
``"torchscript"`` (torch's tracer, no extra dependency), ``"dynamo"`` (torch.export, needs ``onnxscript``) and
``"auto"`` (default): TorchScript first; if onnxruntime cannot load that graph and ``onnxscript`` is installed, the
dynamo exporter (much slower to export: about 12 minutes for MSVM-UNet at 224x224 on 2 cores, against 40 s with
TorchScript), with a note in the report. Needs the ``[onnx]`` extra for the check: ``pip install 'mambaseg[onnx]'``.

Example:
    >>> report = export_onnx(create_model("vmunet_tiny"), "vmunet_tiny.onnx", (1, 3, 64, 64), check=True)  # doctest: +SKIP
    >>> report.max_abs_diff < 1e-4  # doctest: +SKIP
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

# the checkpoint format (below this package)
from mambaseg.checkpoint import build_model, load_checkpoint
from mambaseg.ops import use_backend

__all__ = ["NATIVE_INPUT", "ExportReport", "export_onnx", "load_for_export", "native_input_shape"]

# (channels, H, W) each model is published and benchmarked at
NATIVE_INPUT: dict[str, tuple[int, int, int]] = {
    "vmunet": (3, 256, 256),
    "vmunet_code_default": (3, 256, 256),
    "vmbunet": (3, 256, 256),
    "dermomamba": (3, 192, 256),
    "msvmunet": (1, 224, 224),
    "heteromedseg": (1, 224, 224),
    "slicemamba": (3, 256, 256),
    "vmunet_tiny": (3, 64, 64),
    "slicemamba_tiny": (3, 64, 64),
}

PARITY_TOL = 1e-4


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and measured."""

    path: str
    input_shape: tuple[int, ...]
    opset: int
    exporter: str
    export_seconds: float
    bytes: int
    max_abs_diff: float | None = None  # onnxruntime vs eager (torch backend), same input
    max_abs_diff_auto: float | None = None  # onnxruntime vs eager with the auto backend (fused on CPU)
    eager_ms: float | None = None  # median eager latency (auto backend, inference mode)
    onnxruntime_ms: float | None = None  # median onnxruntime latency
    threads: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def native_input_shape(name: str, in_chans: int | None = None) -> tuple[int, int, int, int]:
    """(1, C, H, W) a registered model is used at (``in_chans`` overrides C); 256x256 for models not listed."""
    c, h, w = NATIVE_INPUT.get(name, (3, 256, 256))
    return (1, in_chans or c, h, w)


def load_for_export(model: str | None = None, checkpoint: str | os.PathLike[str] | None = None, *,
                    num_classes: int = 1, in_chans: int | None = None,
                    size: Sequence[int] | None = None) -> tuple[nn.Module, tuple[int, int, int, int], str]:
    """The model to export (eval mode, CPU) and its input shape: a registered name (fresh weights) or a checkpoint.

    Returns (model, (1, C, H, W), description). ``size`` (H, W) overrides the native / trained size.
    """
    if (model is None) == (checkpoint is None):
        raise ValueError("give exactly one of a model name or a checkpoint")
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        net = build_model(ckpt)
        spec = ckpt.get("model") or {}
        c = int(spec.get("in_chans", 3))
        hw = size or ckpt.get("image_size") or native_input_shape(str(spec.get("name")), c)[2:]
        desc = f"checkpoint {checkpoint} ({spec.get('name')})"
    else:
        from mambaseg.models import create_model

        c = in_chans or native_input_shape(model)[1]
        hw = size or native_input_shape(model)[2:]
        kwargs: dict[str, Any] = {}
        if model == "dermomamba":
            kwargs["img_size"] = tuple(int(v) for v in hw)  # DermoMamba is built for one size
        net = create_model(model, num_classes=num_classes, in_chans=c, **kwargs)
        desc = f"model {model} (freshly initialised weights)"
    h, w = (int(v) for v in hw)
    return net.eval().cpu(), (1, c, h, w), desc


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def export_onnx(model: nn.Module, out: str | os.PathLike[str], input_shape: Sequence[int], *, opset: int = 18,
                exporter: str = "auto", check: bool = True, repeats: int = 5, threads: int | None = None,
                tol: float = PARITY_TOL, seed: int = 0) -> ExportReport:
    """Export ``model`` to ONNX at ``input_shape`` (traced with the torch scan backend); optionally check it.

    With ``check``: runs onnxruntime (CPU) and the eager model on one seeded random input, records the max abs
    difference (torch backend and auto backend) and the median latency of both over ``repeats`` runs after a
    warm-up, on ``threads`` threads (default: torch's current setting). Raises ``RuntimeError`` when the
    difference exceeds ``tol`` and ``ImportError`` (naming the extra) when onnxruntime is missing.
    """
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    notes: list[str] = []
    used = "dynamo" if exporter == "dynamo" else "torchscript"
    _export(model, x, out, opset, used)
    if exporter == "auto":
        problem = _onnxruntime_load_error(out)
        if problem is not None:
            import importlib.util

            if importlib.util.find_spec("onnxscript") is None:
                raise RuntimeError(f"onnxruntime cannot load the TorchScript export ({problem}); install onnxscript "
                                   "(pip install 'mambaseg[onnx]') for the dynamo exporter")
            notes.append(f"TorchScript export not loadable by onnxruntime ({problem}); re-exported with dynamo")
            used = "dynamo"
            _export(model, x, out, opset, used)
    report = ExportReport(path=str(out), input_shape=tuple(int(v) for v in input_shape), opset=opset,
                          exporter=used, export_seconds=time.perf_counter() - t0, bytes=out.stat().st_size,
                          notes=notes)
    if not check:
        return report
    _require_onnxruntime()
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        # eager first: onnxruntime's worker threads keep spinning a while after each run and would slow eager down
        with torch.inference_mode():
            with use_backend("torch"):
                y_torch = _first(model(x))
            y_auto = _first(model(x))
            report.eager_ms = _median_ms(lambda: model(x), repeats)
        report.threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(prev)
    session = onnxruntime_session(out, report.threads)
    feed = {session.get_inputs()[0].name: x.numpy()}
    y_ort = torch.from_numpy(session.run(None, feed)[0])
    report.onnxruntime_ms = _median_ms(lambda: session.run(None, feed), repeats)
    del session
    report.max_abs_diff = float((y_ort - y_torch).abs().max())
    report.max_abs_diff_auto = float((y_ort - y_auto).abs().max())
    if report.max_abs_diff > tol:
        raise RuntimeError(f"onnxruntime output differs from eager by {report.max_abs_diff:.3g} (> {tol:g}) for {out}")
    return report


def _export(model: nn.Module, x: torch.Tensor, out: Path, opset: int, exporter: str) -> None:
    with use_backend("torch"), torch.no_grad():
        torch.onnx.export(model, (x,), str(out), input_names=["image"], output_names=["logits"], opset_version=opset,
                          dynamo=exporter == "dynamo")


def _onnxruntime_load_error(path: Path) -> str | None:
    """Why onnxruntime refuses the file (first line), or None when it loads (or onnxruntime is absent)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return None


def _first(y: Any) -> torch.Tensor:
    """The main output (models with auxiliary heads return a tuple or list in eval mode only if built so)."""
    return y[0] if isinstance(y, (tuple, list)) else y


def _require_onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("onnxruntime is not installed: pip install 'mambaseg[onnx]' (onnx, onnxruntime)") from exc
    return ort


def onnxruntime_session(path: str | os.PathLike[str], threads: int | None = None):
    """A CPU onnxruntime session for ``path`` with ``threads`` intra-op threads (default onnxruntime's choice)."""
    ort = _require_onnxruntime()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
