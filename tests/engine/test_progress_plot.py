"""progress.png: integer epoch ticks and a legend that covers no data."""

from __future__ import annotations

import pytest

from mambaseg.engine.run_logger import plot_progress, progress_figure


def _records(n: int):
    return [{"epoch": e, "train_loss": 1.0 / e, "lr": 1e-3, "time": 2.0, "best_metric": "dice",
             **({"val": {"loss": 0.9 / e, "dice": 0.5 + 0.01 * e}} if e == n else {})} for e in range(1, n + 1)]


@pytest.mark.parametrize("n", [1, 3, 12])
def test_integer_ticks_and_legend_outside_the_axes(n, tmp_path):
    fig = progress_figure(_records(n))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    top = fig.axes[0]
    legend = top.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["train loss", "val loss", "val dice"]
    assert legend.get_window_extent(renderer).y0 >= top.get_window_extent(renderer).y1 - 1  # above the panel
    assert plot_progress(_records(n), tmp_path / "p.png").stat().st_size > 0


def test_tensorboard_writer_starts_with_the_first_scalars(tmp_path):
    """The TensorBoard writer (a slow import) is made when the first scalars arrive, not before the first step;
    those scalars still reach an event file."""
    import sys

    from mambaseg.engine.run_logger import RunLogger

    log = RunLogger(tmp_path)
    assert not (tmp_path / "tb").exists()
    log.scalars({"train/loss": 0.5, "val/dice": float("nan")}, step=1)
    log.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert "torch.utils.tensorboard" in sys.modules
