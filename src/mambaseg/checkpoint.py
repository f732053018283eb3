"""Self-describing checkpoints: atomic writes, ``weights_only`` loading, safetensors export.

A checkpoint is a plain dict of tensors and primitive containers (str/int/float/bool/None/list/tuple/dict), so it
loads with ``torch.load(weights_only=True)`` (no pickled code is ever executed). It carries everything needed to
rebuild and use the model without the training code:

===================  ==========================================================================================
key                  content
===================  ==========================================================================================
``format``           ``"mambaseg-checkpoint"`` and ``format_version`` (int)
``library_version``  ``mambaseg.__version__`` that wrote it
``model``            ``{"name", "num_classes", "in_chans", "kwargs"}`` = ``model.mambaseg_spec``
``state_dict``       the model weights
``normalization``    ``{"mean": [...], "std": [...]}`` of the inputs (or ``None``)
``label_map``        ``{class name: mask pixel value}`` in class-index order
``image_size``       ``[H, W]`` the network was trained at
``task``             data-layout name and ``num_classes``/``in_chans`` of the task
``config``           the resolved :class:`~mambaseg.configs.RunConfig` as a dict
``epoch``/``step``   completed epochs / optimizer steps
``best``             ``{"metric", "mode", "value", "epoch"}``
``metrics``          validation metrics of this checkpoint's weights (nested dict of floats)
``history``          per-epoch records (train loss, lr, val metrics)
``optimizer`` ...    ``optimizer``, ``scheduler``, ``scaler`` states and ``rng`` (training checkpoints only)
===================  ==========================================================================================

Example:
    >>> ckpt = load_checkpoint("runs/x/checkpoints/best.pt")  # doctest: +SKIP
    >>> model = build_model(ckpt)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from mambaseg.utils.modules import unwrap_model  # noqa: F401 (re-exported: the checkpoint API)
from mambaseg.utils.files import atomic_path
from mambaseg.version import __version__

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointWriteError",
    "to_primitive",
    "save_checkpoint",
    "load_checkpoint",
    "export_safetensors",
    "build_model",
    "unwrap_model",
    "snapshot",
    "CheckpointWriter",
]

CHECKPOINT_FORMAT = "mambaseg-checkpoint"
FORMAT_VERSION = 1
_SAFETENSORS_META_KEY = "mambaseg"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a mambaseg checkpoint."""


def to_primitive(obj: Any, where: str = "checkpoint") -> Any:
    """Convert ``obj`` to tensors and primitive containers accepted by ``torch.load(weights_only=True)``.

    NumPy arrays become tensors, NumPy scalars Python numbers, paths strings; anything else that is not a
    primitive raises ``TypeError`` naming where it was found.
    """
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.generic):  # before the subclass checks: np.float64 is a float subclass
        return obj.item()
    for base in (bool, int, float, str):  # other subclasses (IntEnum, str enums, ...) as their base type
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): to_primitive(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        conv = [to_primitive(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return conv if isinstance(obj, list) else tuple(conv)
    if isinstance(obj, torch.Size):
        return tuple(obj)
    raise TypeError(f"{where}: cannot store an object of type {type(obj).__name__} in a weights-only checkpoint")


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        path: destination ``.pt`` file; parent folders are created.
        payload: checkpoint content (see the module docstring); ``format``, ``format_version`` and
            ``library_version`` are added.

    Returns:
        The path written.
    """
    data = dict(payload)
    data.setdefault("format", CHECKPOINT_FORMAT)
    data.setdefault("format_version", FORMAT_VERSION)
    data.setdefault("library_version", __version__)
    data = to_primitive(data)
    with _write_errors(path, "checkpoint"), atomic_path(path) as tmp:
        torch.save(data, tmp)
    return Path(path)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the file and the cause (e.g. no space left)."""


class _write_errors:
    """Turn a failed write of ``path`` into :class:`CheckpointWriteError` naming the file and the cause.

    ``torch.save`` reports a full disk as ``[enforce fail at inline_container.cc] unexpected pos ...``
    (a ``RuntimeError`` without a path or cause); the free space of the folder tells the cause then.
    """

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path, self.what = Path(path), what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or not isinstance(exc, (OSError, RuntimeError)) or isinstance(exc, CheckpointWriteError):
            return False
        import errno as _errno
        import shutil

        code = exc.errno if isinstance(exc, OSError) else None
        if code is None:
            try:
                free = shutil.disk_usage(self.path.parent).free
            except OSError:
                free = None
            if free is not None and free < 64 * 2**20:
                code = _errno.ENOSPC
        if code is None:
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        else:
            cause = os.strerror(code).lower()
        hint = {
            _errno.ENOSPC: "; free some space (the previous version of the file, if any, is unchanged)",
            _errno.EDQUOT: "; free some space (the previous version of the file, if any, is unchanged)",
            _errno.EACCES: "; the folder is not writable for this user",
            _errno.EROFS: "; the folder is on a read-only file system",
        }.get(code, "")
        raise CheckpointWriteError(code, f"cannot write {self.what} {str(self.path)!r}: {cause}{hint}") from exc


def _load_safetensors(p: Path, map_location: str | torch.device) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(p), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if _SAFETENSORS_META_KEY not in meta:
        raise CheckpointError(
            f"{p} is a safetensors file without mambaseg metadata; it holds bare weights only, load them with "
            "safetensors.torch.load_file and build the model yourself"
        )
    info = json.loads(meta[_SAFETENSORS_META_KEY])
    info["state_dict"] = {k: v.to(map_location) for k, v in state.items()}
    return info


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``.pt``) or :func:`export_safetensors`.

    ``.pt`` files are read with ``torch.load(weights_only=True)``: no code is unpickled.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a mambaseg checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is a folder; expected a checkpoint file such as "
                              f"{str(p / 'checkpoints' / 'best.pt')!r} or best.safetensors")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        try:
            data = _load_safetensors(p, map_location)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read safetensors checkpoint {str(p)!r}: {e}") from e
        _check_format_version(data, p)
        _check_finite_weights(data, p)
        return data
    import zipfile

    if p.is_file() and not zipfile.is_zipfile(p):  # torch.save writes a zip archive; torch's error here is cryptic
        with open(p, "rb") as f:
            begins_as_zip = f.read(4) == b"PK\x03\x04"  # a cut archive: torch's error below says what is wrong
        if not begins_as_zip:
            raise CheckpointError(f"{str(p)!r} is not a checkpoint (not a torch checkpoint archive); expected a .pt "
                                  "written by mambaseg train or mambaseg convert, or a .safetensors checkpoint")
    try:
        data = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError/EOFError for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {str(p)!r} (corrupt, truncated or not a torch file): {first}") from e
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(p)!r} is not a mambaseg checkpoint (no 'format': {CHECKPOINT_FORMAT!r} entry); "
            "only files written by mambaseg train can be loaded"
        )
    _check_format_version(data, p)
    _check_finite_weights(data, p)
    return data


def _check_format_version(data: dict[str, Any], p: Path) -> None:
    version = data.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise CheckpointError(f"{str(p)!r}: invalid checkpoint 'format_version' {version!r}; expected an integer "
                              f"from 0 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(p)!r} has checkpoint format version {version}, newer than this mambaseg "
            f"({__version__}) understands (version {FORMAT_VERSION}); upgrade mambaseg"
        )


def _check_finite_weights(data: dict[str, Any], p: Path, limit: int = 8) -> None:
    """Refuse weights holding NaN/inf: such a model predicts garbage (usually all background) without a sign."""
    state = data.get("state_dict")
    if not isinstance(state, dict):
        return
    bad = []
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            n = int((~torch.isfinite(v)).sum())
            if n:
                bad.append(f"{k} ({n} of {v.numel()} values)")
    if bad:
        more = f", ... ({len(bad)} tensors)" if len(bad) > limit else ""
        raise CheckpointError(f"{str(p)!r}: the weights hold NaN/inf values in {', '.join(bad[:limit])}{more}; "
                              "the run that wrote it diverged: use an earlier checkpoint (e.g. best.pt) or retrain")


def export_safetensors(path: str | os.PathLike[str], ckpt: dict[str, Any]) -> Path:
    """Write the weights of ``ckpt`` as safetensors, with the model description in the file's metadata.

    The metadata entry ``"mambaseg"`` holds JSON with ``model``, ``normalization``, ``label_map``, ``image_size``,
    ``task``, ``metrics`` and ``library_version``, so :func:`load_checkpoint` and :func:`mambaseg.load` can rebuild
    the model from this file alone.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["state_dict"].items()}
    keys = ("format", "format_version", "library_version", "model", "normalization", "label_map", "image_size",
            "task", "metrics", "epoch", "best")
    info = {k: ckpt.get(k) for k in keys}
    info["format"] = CHECKPOINT_FORMAT
    info.setdefault("format_version", FORMAT_VERSION)
    info["library_version"] = info.get("library_version") or __version__
    meta = {_SAFETENSORS_META_KEY: json.dumps(_json_safe(info))}
    with _write_errors(path, "safetensors file"), atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def build_model(ckpt: dict[str, Any], *, strict: bool = True) -> nn.Module:
    """Rebuild the model described by a loaded checkpoint and load its weights (on CPU, in eval mode).

    Raises:
        CheckpointError: the model name is not registered in this installation, or the weights do not fit.
    """
    from mambaseg.models import create_model, is_model

    spec = ckpt.get("model") or {}
    name = spec.get("name")
    if not name:
        raise CheckpointError("checkpoint has no model description ('model' entry with a 'name')")
    if not is_model(name):
        raise CheckpointError(
            f"checkpoint needs model {name!r}, which this mambaseg ({__version__}) does not provide; "
            f"it was written by mambaseg {ckpt.get('library_version', '?')}"
        )
    kwargs = dict(spec.get("kwargs") or {})
    if "backend" in kwargs:
        # checkpoints of mambaseg <= 0.1 recorded the scan backend as a model option; it is a runtime choice now
        stored = kwargs.pop("backend")
        warnings.warn(
            f"checkpoint model {name!r} records scan backend {stored!r} (written by an older mambaseg); it is "
            "ignored: the backend is chosen at run time (mambaseg.ops.use_backend, MAMBASEG_SCAN_BACKEND, auto)",
            UserWarning, stacklevel=2,
        )
    model = create_model(name, num_classes=int(spec.get("num_classes", 1)), in_chans=int(spec.get("in_chans", 3)),
                         **kwargs)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"weights in the checkpoint do not fit model {name!r}: {str(e).strip()}") from e
    return model.eval()


def snapshot(obj: Any) -> Any:
    """A copy of ``obj`` whose tensors no longer alias the live ones (cloned on their own device: cheap on a GPU).

    Training goes on while a :class:`CheckpointWriter` saves the snapshot, so weights and optimizer moments must not
    change under it.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [snapshot(v) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    return obj


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_to_cpu(v) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    return obj


class CheckpointWriter:
    """Writes checkpoints on a background thread, in submission order, each one atomically.

    ``submit(path, payload)`` returns at once (the payload must be a :func:`snapshot`); the thread copies it to the
    CPU and calls :func:`save_checkpoint` (and, for ``export=...``, :func:`export_safetensors`). ``flush()`` waits
    until everything submitted is on disk and re-raises a write error (e.g. a full disk) in the caller's thread;
    a later ``submit`` re-raises it too. Order matters: ``best.pt`` submitted before ``last.pt`` is on disk before
    it, so a ``last.pt`` never names a best checkpoint that is not there.

    Args:
        background: ``False`` writes synchronously inside ``submit`` (same files, same order).
    """

    def __init__(self, background: bool = True) -> None:
        import queue
        import threading

        self.background = background
        self._error: BaseException | None = None
        self._queue: Any = queue.Queue() if background else None
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._work, name="mambaseg-checkpoint-writer", daemon=True)
            self._thread.start()

    def _write(self, path: Path, payload: dict[str, Any], export: Path | None) -> None:
        data = _to_cpu(payload)
        save_checkpoint(path, data)
        if export is not None:
            export_safetensors(export, data)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._write(*item)
            except BaseException as e:  # kept and re-raised in the training thread (flush/submit)
                self._error = e
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, path: str | os.PathLike[str], payload: dict[str, Any], *,
               export: str | os.PathLike[str] | None = None) -> None:
        """Queue ``payload`` (a snapshot) for ``path``; also export ``best.safetensors``-style weights to ``export``."""
        self._raise()
        item = (Path(path), payload, Path(export) if export is not None else None)
        if self.background:
            self._queue.put(item)
        else:
            self._write(*item)

    def flush(self) -> None:
        """Block until every submitted checkpoint is written; re-raise a write error."""
        if self.background:
            self._queue.join()
        self._raise()

    def close(self) -> None:
        """Flush and stop the thread (re-raises a write error)."""
        try:
            self.flush()
        finally:
            if self.background and self._thread is not None and self._thread.is_alive():
                self._queue.put(None)
                self._thread.join()
