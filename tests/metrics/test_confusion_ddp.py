from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mambaseg.metrics import MetricAccumulator


def _data():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (6, 8, 8), generator=g)
    pred = torch.where(torch.rand(6, 8, 8, generator=g) < 0.3, torch.randint(0, 3, (6, 8, 8), generator=g), target)
    return pred, target


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pred, target = _data()
        acc = MetricAccumulator(3)
        acc.update(pred[rank::world], target[rank::world])  # unpadded shards
        acc.all_reduce()
        if rank == 0:
            torch.save(acc.summary(), out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_over_two_gloo_processes_equals_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=2, join=True)
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    pred, target = _data()
    single = MetricAccumulator(3)
    single.update(pred, target)
    want = single.summary()
    assert got["pooled"] == want["pooled"]
    for m in ("acc", "sen", "spe", "dsc", "iou"):
        assert got["per_case"][m] == pytest.approx(want["per_case"][m], rel=1e-12)
