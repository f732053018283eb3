from __future__ import annotations

import torch

from mambaseg.models.slicemamba import SliceMamba
from mambaseg.nas import SliceMambaSupernet, UniformPathSampler

TINY = dict(dims=8, depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4, drop_path_rate=0.0)


def tiny(**kw):
    torch.manual_seed(0)
    return SliceMambaSupernet(**{**TINY, **kw})


def test_sampler_uniform_seeded_and_resumable():
    a, b = UniformPathSampler(22, 4, seed=5), UniformPathSampler(22, 4, seed=5)
    seq = [a.sample() for _ in range(50)]
    assert seq == [b.sample() for _ in range(50)]
    assert all(len(s) == 22 and set(s) <= {0, 1, 2, 3} for s in seq)
    counts = torch.bincount(torch.tensor(seq).flatten(), minlength=4).float() / (50 * 22)
    assert (counts - 0.25).abs().max() < 0.05
    st = a.state_dict()
    nxt = [a.sample() for _ in range(3)]
    c = UniformPathSampler(22, 4, seed=0)
    c.load_state_dict(st)
    assert [c.sample() for _ in range(3)] == nxt


def test_four_separate_candidates_per_position():
    net = tiny()
    blocks = net.choice_blocks()
    assert len(blocks) == net.num_positions == 8
    for blk in blocks:
        assert [c.slice_size for c in blk.candidates] == [(2, 2), (2, 4), (4, 2), (4, 4)]
        ptrs = {c.ln_1.weight.data_ptr() for c in blk.candidates}
        assert len(ptrs) == 4  # no weight sharing between options


def test_spos_one_random_path_per_step_only_it_gets_gradients():
    net = tiny()
    x = torch.randn(2, 3, 32, 32)
    paths = []
    for _ in range(6):
        net.zero_grad(set_to_none=True)
        net(x).mean().backward()
        arch = net.last_arch
        paths.append(arch)
        for blk, g in zip(net.choice_blocks(), arch):
            for k, cand in enumerate(blk.candidates):
                has = any(p.grad is not None for p in cand.parameters())
                assert has == (k == g)
        assert net.patch_embed.proj.weight.grad is not None  # shared layers always train
    assert len(set(paths)) > 1


def test_fixed_path_and_context_and_eval_random_path():
    net = tiny().eval()
    x = torch.randn(1, 3, 32, 32)
    arch = (0, 1, 2, 3, 3, 2, 1, 0)
    with net.use_arch(arch):
        y1 = net(x)
        y2 = net(x)
        assert net.last_arch == arch
    torch.testing.assert_close(y1, y2)
    assert net.fixed_arch is None
    seen = set()
    for _ in range(4):
        net(x)
        seen.add(net.last_arch)
    assert len(seen) > 1  # validation without a fixed arch draws random paths


def test_extract_matches_supernet_path():
    net = tiny().eval()
    arch = [3, 0, 1, 2, 2, 1, 0, 3]
    sub = net.extract(arch).eval()
    assert isinstance(sub, SliceMamba) and sub.arch == tuple(arch)
    x = torch.randn(2, 3, 64, 32)
    net.set_arch(arch)
    with torch.no_grad():
        torch.testing.assert_close(net(x), sub(x))
    fresh = SliceMamba(arch=arch, **TINY)
    assert set(fresh.state_dict()) == set(net.subnet_state_dict(arch))
