"""Per-volume evaluation sharded over 2 gloo processes gives the single-process result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_acdc import make_acdc  # noqa: E402


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Conv2d(1, 4, 3, padding=1)
    m.in_chans = 1  # type: ignore[attr-defined]
    return m


def _evaluate(root: str, rank: int, world: int) -> dict:
    from mambaseg.configs import RunConfig, apply_overrides
    from mambaseg.engine import EvalContext, open_data
    from mambaseg.utils.distributed import DistContext

    cfg = apply_overrides(RunConfig(), ["data.image_size=[32,32]", "data.augment=false"])
    task = open_data(root, cfg, splits=("val",))
    ctx = EvalContext(batch_size=2, dist=DistContext(rank=rank, world_size=world),
                      loss_fn=lambda lg, y: torch.nn.functional.cross_entropy(lg, y))
    return task.evaluator.evaluate(_model(), task.datasets["val"], ctx)


def _worker(rank: int, root: str, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        res = _evaluate(root, rank, 2)
        Path(out, f"r{rank}.json").write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc")
    single = _evaluate(str(root), 0, 1)
    mp.spawn(_worker, args=(str(root), f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2, join=True)
    loss_1 = single.pop("loss")
    for r in (0, 1):
        res = json.loads((tmp_path / f"r{r}.json").read_text())
        loss_2 = res.pop("loss")
        assert abs(loss_1 - loss_2) < 1e-5
        assert res == json.loads(json.dumps(single))
