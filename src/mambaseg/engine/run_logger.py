"""Run-directory logging: a text log, TensorBoard events, ``history.json`` and an nnU-Net-like ``progress.png``.

TensorBoard has two x-axes: per-epoch scalars (``train/``, ``val/``) go to ``tb/`` with the epoch as step, per-step
scalars (``train_step/``) to ``tb/steps/`` with the optimizer step. A resumed run tells the logger where its
checkpoint stood (:meth:`RunLogger.resume_at`): each writer then starts with a purge point, so the points an
interrupted run logged after its last checkpoint are dropped when TensorBoard reads the run (one purge point per
directory, as the purge applies to every tag of a directory: the two axes cannot share one).

Only the main process (rank 0) creates a :class:`RunLogger` that writes; other ranks use ``RunLogger(None)``,
whose methods do nothing.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from pathlib import Path
from typing import Any

from mambaseg.utils.files import atomic_path, atomic_write_json

__all__ = ["RunLogger", "plot_progress", "progress_figure"]

_TB_DIRS = {"epoch": "tb", "step": "tb/steps"}


class RunLogger:
    """Writes ``train.log``, TensorBoard events (``tb/``), ``history.json`` and ``progress.png`` in ``run_dir``.

    Args:
        run_dir: run directory, or ``None`` for a logger that writes nothing (non-main DDP ranks).
        tensorboard: write TensorBoard events (skipped with a log line if the ``tensorboard`` package is missing).
    """

    def __init__(self, run_dir: str | Path | None, *, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.plot_interval = 30.0
        self._last_plot: float | None = None
        self._log = None
        self._tb: dict[str, Any] = {}  # folder -> SummaryWriter, made with that folder's first scalars
        self._tb_wanted = False
        self._dirs = dict(_TB_DIRS)  # axis -> folder
        self._purge: dict[str, int] = {}  # folder -> purge step
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.run_dir / "train.log", "a", encoding="utf-8")
        # the writer is made with the first scalars (end of the first epoch): importing TensorBoard takes ~0.2-0.5 s
        # that would otherwise delay the first training step
        self._tb_wanted = tensorboard

    @property
    def active(self) -> bool:
        return self.run_dir is not None

    def log(self, message: str) -> None:
        """Append a time-stamped line to ``train.log``."""
        if self._log is None:
            return
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        for line in str(message).splitlines() or [""]:
            self._log.write(f"{stamp} {line}\n")
        self._log.flush()

    def resume_at(self, *, epoch: int, step: int) -> None:
        """The run continues from a checkpoint written after ``epoch`` epochs and ``step`` optimizer steps: points
        of a later epoch or step already in ``tb/`` (logged before an interruption) are dropped by TensorBoard."""
        if self._tb:
            raise RuntimeError("RunLogger.resume_at must come before the first scalars")
        tb = self.run_dir / "tb" if self.run_dir is not None else None
        if tb is not None and any(tb.glob("events.out.tfevents.*")) and not (tb / "steps").is_dir():
            # a run written before tb/steps/ existed: its per-step points are in tb/ beside the per-epoch ones.
            # One purge there at the step keeps both histories (epoch numbers are below step numbers); the
            # redone epochs' points may show twice, as they did then
            self._dirs = {"epoch": "tb", "step": "tb"}
            self._purge = {"tb": int(step) + 1}
            self.log("TensorBoard: tb/ holds per-step points of an earlier layout; this run keeps logging there "
                     "(redone epochs may show twice)")
            return
        self._purge = {self._dirs["epoch"]: int(epoch) + 1, self._dirs["step"]: int(step) + 1}

    def scalars(self, values: dict[str, float], step: int, prefix: str = "", *, axis: str = "epoch") -> None:
        """Add scalars to TensorBoard against ``axis`` (``"epoch"``: ``tb/``, ``"step"``: ``tb/steps/``);
        non-finite values are skipped."""
        folder = self._dirs.get(axis)
        if folder is None:
            raise ValueError(f"axis must be one of {sorted(_TB_DIRS)}, got {axis!r}")
        writer = self._tb.get(folder)
        if writer is None and self._tb_wanted and self.run_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is a declared dependency, but keep training if it is absent
                self._tb_wanted = False
                self.log(f"TensorBoard disabled: {e}")
                return
            writer = SummaryWriter(log_dir=str(self.run_dir / folder), purge_step=self._purge.get(folder))
            self._tb[folder] = writer
        if writer is None:
            return
        for k, v in values.items():
            if v is None or not math.isfinite(float(v)):
                continue
            writer.add_scalar(f"{prefix}{k}", float(v), step)

    def history(self, records: list[dict[str, Any]], *, final: bool = False) -> None:
        """Write ``history.json`` and redraw ``progress.png`` from the per-epoch records.

        The plot is redrawn at most every ``plot_interval`` seconds (drawing costs ~0.2 s, more than a short GPU
        epoch) and always when ``final`` is set.
        """
        if self.run_dir is None:
            return
        atomic_write_json(self.run_dir / "history.json", records)
        now = time.monotonic()
        if final or self._last_plot is None or now - self._last_plot >= self.plot_interval:
            plot_progress(records, self.run_dir / "progress.png")
            self._last_plot = now
        for writer in self._tb.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._tb.values():
            writer.close()
        self._tb, self._tb_wanted = {}, False  # closed: later scalars make no new writer
        if self._log is not None:
            self._log.close()
            self._log = None


def plot_progress(records: list[dict[str, Any]], path: str | Path, metric: str | None = None) -> Path:
    """Draw training curves like nnU-Net's ``progress.png``.

    Top panel: train loss and validation loss per epoch (left axis) and the validation metric (right axis);
    middle: epoch duration; bottom: learning rate.

    Args:
        records: per-epoch dicts with ``epoch``, ``train_loss``, ``lr``, ``time`` and optionally ``val`` (a dict
            of scalar validation metrics) and ``best_metric`` (the selection metric's name).
        path: output PNG.
        metric: validation metric to plot (default: each record's ``best_metric`` or ``dice``).
    """
    fig = progress_figure(records, metric)
    p = Path(path)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, format="png")
    return p


def progress_figure(records: list[dict[str, Any]], metric: str | None = None) -> Any:
    """The figure of :func:`plot_progress`: epochs on integer ticks, the legend above the top panel (outside the
    axes, so it hides no point, not even a single validation point)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 10), dpi=80)
    FigureCanvasAgg(fig)
    ax_loss, ax_time, ax_lr = fig.subplots(3, 1, gridspec_kw={"height_ratios": [2, 1, 1]})
    ep = [r["epoch"] for r in records]
    ax_loss.plot(ep, [r.get("train_loss") for r in records], color="tab:blue", marker=".", label="train loss")
    vals = [(r["epoch"], r["val"]) for r in records if isinstance(r.get("val"), dict)]
    if any("loss" in v for _, v in vals):
        ax_loss.plot([e for e, v in vals if "loss" in v], [v["loss"] for _, v in vals if "loss" in v],
                     color="tab:red", marker=".", label="val loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    name = metric or (records[-1].get("best_metric") if records else None) or "dice"
    if name == "loss":
        name = "dice"
    pts = [(e, v[name]) for e, v in vals if isinstance(v.get(name), (int, float))]
    ax_m = ax_loss.twinx()
    if pts:
        ax_m.plot([e for e, _ in pts], [m for _, m in pts], color="tab:green", marker="o", ms=3,
                  label=f"val {name}")
    ax_m.set_ylabel(f"val {name}")
    lines = ax_loss.get_legend_handles_labels()
    lines2 = ax_m.get_legend_handles_labels()
    ax_loss.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower left", bbox_to_anchor=(0.0, 1.01),
                   ncol=3, frameon=False, borderaxespad=0.0)
    ax_time.plot(ep, [r.get("time") for r in records], color="tab:purple", marker=".")
    ax_time.set_ylabel("epoch time [s]")
    ax_lr.plot(ep, [r.get("lr") for r in records], color="tab:orange", marker=".")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    for ax in (ax_loss, ax_time, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(ep) == 1:  # one epoch: a symmetric integer range around it instead of fractional ticks
            ax.set_xlim(ep[0] - 1, ep[0] + 1)
    fig.tight_layout()
    return fig
