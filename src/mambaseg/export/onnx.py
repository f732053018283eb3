"""ONNX export of a registered model or a checkpoint, with an onnxruntime parity check and latency beside eager.

The exported graph is the model with the traceable ``"torch"`` selective-scan backend (the fused CPU kernel and the
GPU kernels are not ONNX operators), traced at one fixed input shape (batch, channels, H, W). Exporters:
``"torchscript"`` (torch's tracer), ``"dynamo"`` (torch.export, needs ``onnxscript``) and
``"auto"`` (default): TorchScript first; if onnxruntime cannot load that graph and ``onnxscript`` is installed, the
dynamo exporter (much slower to export: about 12 minutes for MSVM-UNet at 224x224 on 2 cores, against 40 s with
TorchScript), with a note in the report. Needs the ``[onnx]`` extra: ``pip install 'mambaseg[onnx]'`` (``onnx`` writes
the file's metadata, ``onnxruntime`` runs the check).

The file carries what a deployment without torch needs as ``metadata_props`` (:func:`export_metadata`; onnxruntime:
``session.get_modelmeta().custom_metadata_map``): ``mambaseg.*`` keys with JSON values (the model, the input size,
the preprocessing and normalisation, the logits -> labels rule, the label map). It is written atomically
(:class:`mambaseg.utils.files.atomic_path`) and never replaces an existing file unless ``overwrite=True``.

Example:
    >>> model = create_model("vmunet_tiny")  # doctest: +SKIP
    >>> report = export_onnx(model, "vmunet_tiny.onnx", (1, 3, 64, 64), check=True)  # doctest: +SKIP
    >>> report.max_abs_diff < 1e-4  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

# the checkpoint format (below this package)
from mambaseg.checkpoint import build_model, load_checkpoint
from mambaseg.ops import use_backend
from mambaseg.utils.files import atomic_path, check_output_file, json_safe
from mambaseg.version import __version__

__all__ = ["NATIVE_INPUT", "METADATA_FORMAT", "ExportReport", "export_metadata", "export_onnx", "load_for_export",
           "native_input_shape"]

#: ``mambaseg.format`` / ``mambaseg.format_version`` of the metadata written into the ONNX file
METADATA_FORMAT = ("mambaseg-onnx", 1)

#: oldest ONNX opset torch's exporters write (``torch.onnx._constants.ONNX_MIN_OPSET``)
MIN_OPSET = 7

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
    metadata: dict[str, Any] = field(default_factory=dict)  # the mambaseg.* metadata_props written, JSON-decoded

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


def export_metadata(model: nn.Module, input_shape: Sequence[int],
                    checkpoint: str | os.PathLike[str] | Mapping[str, Any] | None = None, *,
                    threshold: float = 0.5) -> dict[str, Any]:
    """The ``mambaseg.*`` metadata of an exported file (values as Python objects; written as JSON strings).

    Everything a deployment needs to use the file without torch: the model (``mambaseg.model``,
    ``mambaseg.num_classes``, ``mambaseg.in_chans``), the input (``mambaseg.image_size`` (H, W),
    ``mambaseg.input``), the preprocessing of :class:`mambaseg.inference.Predictor` (``mambaseg.preprocessing``,
    ``mambaseg.normalization``: the checkpoint's mean/std or ``None``), the logits -> labels rule
    (``mambaseg.labels``), the checkpoint's label map (``mambaseg.label_map`` or ``None``) and where the weights
    come from (``mambaseg.source``). ``checkpoint`` (a path or a loaded checkpoint) supplies the normalisation, the
    label map and the source; without it the model is described as freshly initialised. A checkpoint trained on
    volumes (ACDC, Synapse, nnU-Net raw, a volcache) gets the volume pipeline of ``mambaseg predict`` instead of the
    2-D image one: slices along D, each channel's intensity scaling by its recorded name, the cubic zoom to the network
    size and the nearest zoom of the labels back (``mambaseg.labels`` then has ``resize_labels``). docs/cpu_inference.md
    lists the keys.
    """
    ckpt: Mapping[str, Any] | None
    if checkpoint is None or isinstance(checkpoint, Mapping):
        ckpt = checkpoint
    else:
        ckpt = load_checkpoint(checkpoint)
    spec = dict((ckpt or {}).get("model") or getattr(model, "mambaseg_spec", None) or {})
    n, c, h, w = (int(v) for v in input_shape)
    num_classes = int(spec.get("num_classes", getattr(model, "num_classes", 1)))
    in_chans = int(spec.get("in_chans", c))
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    norm = (ckpt or {}).get("normalization")
    label_map = (ckpt or {}).get("label_map")
    if ckpt is None:
        source: dict[str, Any] = {"weights": "fresh"}
    else:
        name = Path(os.fspath(checkpoint)).name if not isinstance(checkpoint, Mapping) else None
        source = {"weights": "checkpoint", "file": name, "epoch": ckpt.get("epoch")}
    preprocessing: dict[str, Any] = {
        "steps": ["read", "resize", "scale", "normalize", "nchw"],
        "read": "EXIF orientation applied, alpha dropped",
        "channels": "rgb" if in_chans == 3 else "grey" if in_chans == 1 else f"{in_chans} channels",
        "resize": {"to": [h, w], "shrink": "area", "enlarge": "bilinear"},
        "scale": {"uint8": 255, "uint16": 65535},
    }
    if in_chans == 1:
        preprocessing["grey_from_rgb"] = [0.299, 0.587, 0.114]
    if num_classes == 1:
        labels: dict[str, Any] = {"rule": "sigmoid_threshold", "threshold": float(threshold)}
    else:
        labels = {"rule": "argmax"}
    if _volumetric(ckpt):  # slice by slice through volumes: the pipeline of mambaseg.inference.volume
        preprocessing = _volume_preprocessing(ckpt, in_chans, (h, w))
        labels["resize_labels"] = "nearest"  # labels at the network size, zoomed back (order 0)
    else:
        labels["resize_logits"] = "bilinear"
    return {
        "mambaseg.format": METADATA_FORMAT[0],
        "mambaseg.format_version": METADATA_FORMAT[1],
        "mambaseg.library_version": __version__,
        "mambaseg.model": spec.get("name", type(model).__name__),
        "mambaseg.num_classes": num_classes,
        "mambaseg.in_chans": in_chans,
        "mambaseg.image_size": [h, w],
        "mambaseg.input": {"name": "image", "shape": [n, c, h, w], "dtype": "float32", "layout": "NCHW"},
        "mambaseg.output": {"name": "logits", "shape": [n, num_classes, h, w], "dtype": "float32"},
        "mambaseg.preprocessing": preprocessing,
        "mambaseg.normalization": ({"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}
                                   if norm else None),
        "mambaseg.labels": labels,
        "mambaseg.label_map": {str(k): int(v) for k, v in label_map.items()} if label_map else None,
        "mambaseg.source": source,
    }


#: layouts whose checkpoints predict volumes slice by slice (checkpoints that do not record their evaluator)
_VOLUME_LAYOUTS = ("acdc", "synapse", "nnunet", "volcache")


def _volumetric(ckpt: Mapping[str, Any] | None) -> bool:
    """Whether a checkpoint was trained on volumes (its task's evaluator, else its layout)."""
    task = (ckpt or {}).get("task") or {}
    return task.get("evaluator") == "volume_slicewise" or task.get("layout") in _VOLUME_LAYOUTS


def _scale_rule(scale: str) -> dict[str, Any]:
    """What a :func:`mambaseg.inference.volume.read_volume` ``scale`` does to one channel's whole volume."""
    from mambaseg.data.nnunet import CT_WINDOW

    minmax = "(x - min) / (max - min) over the whole volume of this channel (a constant volume gives zeros)"
    if scale == "ct":
        lo, hi = CT_WINDOW
        return {"scale": "ct", "window": [lo, hi],
                "rule": f"clip to the CT window [{lo:g}, {hi:g}] (Hounsfield units), then (x - {lo:g}) / {hi - lo:g}"}
    if scale == "minmax":
        return {"scale": "minmax", "rule": minmax}
    if scale == "auto":
        return {"scale": "auto", "rule": f"NIfTI files: {minmax}; h5/npz/npy arrays already within [0, 1]: kept as "
                                         f"they are, others: {minmax}"}
    return {"scale": scale, "rule": "kept as read"}


def _volume_preprocessing(ckpt: Mapping[str, Any], in_chans: int, size: tuple[int, int]) -> dict[str, Any]:
    """``mambaseg.preprocessing`` of a checkpoint trained on volumes: how ``mambaseg predict`` reads, scales, slices,
    resizes and normalises a volume, and brings the labels back (:mod:`mambaseg.inference.volume`). Each channel's
    scaling comes from the checkpoint's recorded channel names by :func:`~mambaseg.inference.volume.volume_scales`,
    the function ``predict`` uses."""
    from mambaseg.inference.volume import volume_channels, volume_scales

    names = list((ckpt.get("task") or {}).get("channel_names") or [])
    channels = volume_channels(dict(ckpt), in_chans)  # files per case, as predict reads them
    note = None
    try:
        scale = volume_scales(dict(ckpt), channels)
        scales = [scale] if isinstance(scale, str) else scale
    except ValueError as exc:  # an nnU-Net run that records no channel names: the scaling is unknown
        scales, note = ["unknown"] * channels, str(exc)
    entries = []
    for i, sc in enumerate(scales or ["auto"] * channels):
        rule = _scale_rule(sc) if sc != "unknown" else {"scale": "unknown", "rule": note}
        entries.append({"index": i, "name": names[i] if i < len(names) else None, **rule})
    h, w = size
    out: dict[str, Any] = {
        "kind": "volume_slicewise",
        "steps": ["read", "scale", "slice", "resize", "normalize", "nchw", "labels_back"],
        "read": "one (D, H, W) float32 array per channel: a NIfTI file's (X, Y, Z) data transposed to (Z, Y, X) = "
                "(D, H, W) (nibabel: np.asanyarray(img.dataobj).transpose(2, 1, 0)); h5 dataset 'image', npz key "
                "'image' (or 'img') and npy arrays as stored, (D, H, W); several channels come one file per channel "
                "(nnU-Net's <case>_0000, <case>_0001, ...), in the order of 'channels'",
        "channels": entries,
        "scale": "each channel's whole volume by its 'channels' entry's rule, to [0, 1], before slicing",
        "slice": {"axis": 0, "rule": "slice by slice along the first (D) axis of the (D, H, W) volume: slice z is one "
                                     "network input, (H, W, C) with the channels stacked last in channel order"},
        "resize": {"to": [h, w], "method": "spline", "order": 3,
                   "rule": f"each channel of the slice zoomed to {h} x {w} with scipy.ndimage.zoom(x, ({h} / H, {w} "
                           "/ W), order=3) (cubic spline, scipy's defaults)"},
        "normalize": "(x - mean) / std per channel with mambaseg.normalization, after the resize (none when null)",
        "labels_back": {"rule": "labels at the network size (mambaseg.labels), each label slice zoomed back to the "
                                "volume's H x W with scipy.ndimage.zoom(labels, (H / h, W / w), order=0) (nearest), "
                                "stacked along D into a (D, H, W) label volume (for a NIfTI output transpose it back "
                                "to (X, Y, Z) and keep the source's affine)",
                        "method": "nearest", "order": 0},
    }
    if channels == 1 and in_chans == 3:
        out["repeat_channels"] = {"to": 3, "rule": "the single channel repeated 3 times (after the resize)"}
    return out


def export_onnx(model: nn.Module, out: str | os.PathLike[str], input_shape: Sequence[int], *, opset: int = 18,
                exporter: str = "auto", check: bool = True, repeats: int = 5, threads: int | None = None,
                tol: float = PARITY_TOL, seed: int = 0, metadata: Mapping[str, Any] | None = None,
                overwrite: bool = False) -> ExportReport:
    """Export ``model`` to ONNX at ``input_shape`` (traced with the torch scan backend); optionally check it.

    The file is written atomically with ``metadata`` as its ``mambaseg.*`` metadata_props (JSON strings; default
    :func:`export_metadata` of the model alone: pass ``export_metadata(model, shape, checkpoint)`` for a trained
    model's normalisation and label map). An existing ``out`` is refused (``FileExistsError``) unless
    ``overwrite``. Export failures raise ``RuntimeError`` with the exporter's first line and the opset.

    With ``check``: runs onnxruntime (CPU) and the eager model on one seeded random input, records the max abs
    difference (torch backend and auto backend) and the median latency of both over ``repeats`` runs after a
    warm-up, on ``threads`` threads (default: torch's current setting). Raises ``RuntimeError`` when the
    difference exceeds ``tol`` and ``ImportError`` (naming the extra) when onnxruntime is missing.
    """
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"--opset {opset!r} is not an ONNX opset torch can export: expected an integer >= "
                         f"{MIN_OPSET} (default 18)")
    _require_onnx()
    out = Path(out)
    check_output_file(out, overwrite=overwrite, kind="an ONNX file", example="model.onnx")
    meta = dict(metadata) if metadata is not None else export_metadata(model, input_shape)
    model = model.eval()
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    notes: list[str] = []
    used = "dynamo" if exporter == "dynamo" else "torchscript"
    with atomic_path(out) as tmp:
        traced = _export(model, x, tmp, opset, used)
        if exporter == "auto":
            problem = _onnxruntime_load_error(tmp)
            if problem is not None:
                import importlib.util

                if importlib.util.find_spec("onnxscript") is None:
                    raise RuntimeError(f"onnxruntime cannot load the TorchScript export ({problem}); install "
                                       "onnxscript (pip install 'mambaseg[onnx]') for the dynamo exporter")
                notes.append(f"TorchScript export not loadable by onnxruntime ({problem}); re-exported with dynamo")
                used = "dynamo"
                traced = _export(model, x, tmp, opset, used)
        _write_metadata(tmp, meta)
    if traced:
        notes.append(traced)
    report = ExportReport(path=str(out), input_shape=tuple(int(v) for v in input_shape), opset=opset,
                          exporter=used, export_seconds=time.perf_counter() - t0, bytes=out.stat().st_size,
                          notes=notes, metadata=meta)
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
    report.max_abs_diff = float((y_ort - y_torch).abs().max())
    report.max_abs_diff_auto = float((y_ort - y_auto).abs().max())
    if report.max_abs_diff > tol:
        raise RuntimeError(f"onnxruntime output differs from eager by {report.max_abs_diff:.3g} (> {tol:g}) for {out}")
    return report


def _export(model: nn.Module, x: torch.Tensor, out: Path, opset: int, exporter: str) -> str | None:
    """Export; return a note summing up torch's TracerWarnings (other warnings are passed on as they came).

    The tracer warns at every Python branch or ``int()`` on a tensor shape (shape checks, padding, reshapes): a few
    hundred per model, each saying the value becomes a constant of the trace. For an export at one fixed input shape
    that is what is wanted, so they are counted and named in one note of the report instead of printed one by one.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        try:
            with use_backend("torch"), torch.no_grad(), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.onnx.export(model, (x,), str(out), input_names=["image"], output_names=["logits"],
                                  opset_version=opset, dynamo=exporter == "dynamo")
        finally:  # outside the recording: the other warnings reach the caller's filters as they came
            traced = _tracer_warning_sites(caught)
        return None if not traced else (
            f"torch's tracer warned {sum(traced.values())} times that a shape becomes a constant of the graph "
            f"({len(traced)} places, e.g. {', '.join(list(traced)[:3])}): expected, the file takes only the input "
            f"shape {list(x.shape)}")
    except ImportError:
        raise
    except Exception as exc:  # torch raises its own error types; the first line says what failed
        text = str(exc).strip()
        first = text.splitlines()[0][:500] if text else type(exc).__name__
        raise RuntimeError(f"the {exporter} ONNX exporter failed at opset {opset} (--opset; default 18): "
                           f"{first}") from exc


def _tracer_warning_sites(caught: list[warnings.WarningMessage]) -> dict[str, int]:
    """Count the TracerWarnings among ``caught`` by place (``file:line``); warn the others again, unchanged."""
    sites: dict[str, int] = {}
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning):
            place = f"{Path(w.filename).name}:{w.lineno}"
            sites[place] = sites.get(place, 0) + 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return sites


def _write_metadata(path: Path, metadata: Mapping[str, Any]) -> None:
    """Set ``metadata`` (JSON-encoded values) as metadata_props of the ONNX file at ``path`` (other keys kept)."""
    import onnx

    proto = onnx.load(str(path))
    entries = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        entry = entries.get(key)
        if entry is None:
            entry = proto.metadata_props.add()
            entry.key = key
        entry.value = json.dumps(json_safe(value), allow_nan=False)  # one line: viewers show the values inline
    onnx.save(proto, str(path))


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


def _require_onnx() -> None:
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise ImportError("onnx is not installed: pip install 'mambaseg[onnx]' (onnx writes the exported file's "
                          "metadata)")


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
