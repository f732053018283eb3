from __future__ import annotations

import json

import pytest

from mambaseg.nas.evolution import EvolutionConfig, EvolutionSearch

TARGET = (3, 1, 0, 2, 3, 3, 1, 2)


def match_fitness(g):
    """Toy fitness: (genes equal to TARGET, -sum of genes) — lexicographic."""
    return (float(sum(a == b for a, b in zip(g, TARGET))), -float(sum(g)))


def make(tmp_path=None, fitness=match_fitness, **cfg):
    kw = dict(generations=6, population=12, select_num=4, mutation_num=6, crossover_num=6, seed=3)
    kw.update(cfg)
    return EvolutionSearch(
        fitness,
        num_genes=len(TARGET),
        num_choices=4,
        config=EvolutionConfig(**kw),
        state_path=None if tmp_path is None else tmp_path / "state.json",
        log_path=None if tmp_path is None else tmp_path / "log.jsonl",
        fitness_names=("match", "neg_sum"),
    )


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_paper_defaults():
    c = EvolutionConfig().resolved()
    assert (c.generations, c.population, c.select_num, c.mutation_num, c.mutation_prob, c.crossover_num) == (
        20, 50, 10, 25, 0.1, 25)
    c = EvolutionConfig(population=4, mutation_num=None, crossover_num=None).resolved()
    assert (c.mutation_num, c.crossover_num) == (2, 2)


@pytest.mark.parametrize(
    "kw", [dict(population=0), dict(mutation_prob=1.5), dict(population=10, mutation_num=8, crossover_num=8),
           dict(generations=-1)]
)
def test_bad_config(kw):
    with pytest.raises(ValueError):
        EvolutionConfig(**kw).resolved()


def test_finds_target_and_logs_every_candidate(tmp_path):
    s = make(tmp_path, fitness=match_fitness, generations=12, population=24, select_num=6, mutation_num=10,
             crossover_num=10)
    res = s.run()
    assert res.best == TARGET
    assert res.fitness == match_fitness(TARGET)
    log = read_log(tmp_path / "log.jsonl")
    archs = [tuple(r["arch"]) for r in log]
    assert len(archs) == len(set(archs)) == res.num_evaluated  # no duplicates, all logged
    gens = {r["generation"] for r in log}
    assert gens == set(range(12))
    for r in log:
        assert tuple(r["fitness"]) == match_fitness(tuple(r["arch"]))
        assert r["match"] == r["fitness"][0]
    # each generation scores `population` new genomes while the space is large
    per_gen = [sum(r["generation"] == k for r in log) for k in range(3)]
    assert per_gen == [24, 24, 24]


def test_top_is_lexicographic():
    s = EvolutionSearch(lambda g: (1.0, float(g[0])), num_genes=3, num_choices=4,
                        config=EvolutionConfig(generations=1, population=20, select_num=20, seed=0,
                                               mutation_num=0, crossover_num=0))
    res = s.run()
    assert res.best[0] == 3
    fits = [f for _, f in res.top]
    assert fits == sorted(fits, reverse=True)


def test_deterministic(tmp_path):
    a = make(tmp_path / "a").run()
    b = make(tmp_path / "b").run()
    assert a.best == b.best and a.top == b.top
    assert read_log(tmp_path / "a" / "log.jsonl")[0]["arch"] == read_log(tmp_path / "b" / "log.jsonl")[0]["arch"]
    c = make(tmp_path / "c", seed=4).run(resume=False)
    la = [r["arch"] for r in read_log(tmp_path / "a" / "log.jsonl")]
    lc = [r["arch"] for r in read_log(tmp_path / "c" / "log.jsonl")]
    assert la != lc


def test_resume_between_generations_equals_uninterrupted(tmp_path):
    full = make(tmp_path / "full").run()
    part = make(tmp_path / "part")
    part.run(max_generations=2)
    assert part.generation == 2 and not part.done
    resumed = make(tmp_path / "part").run()  # new object, state loaded from disk
    assert resumed.best == full.best and resumed.top == full.top
    assert resumed.num_evaluated == full.num_evaluated
    la = [r["arch"] for r in read_log(tmp_path / "full" / "log.jsonl")]
    lb = [r["arch"] for r in read_log(tmp_path / "part" / "log.jsonl")]
    assert la == lb


def test_resume_mid_generation_rescoring_nothing(tmp_path):
    full = make(tmp_path / "full").run()
    calls = []

    def flaky(g):
        calls.append(g)
        if len(calls) == 17:
            raise KeyboardInterrupt
        return match_fitness(g)

    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "p", fitness=flaky).run()
    calls2 = []

    def counting(g):
        calls2.append(g)
        return match_fitness(g)

    res = make(tmp_path / "p", fitness=counting).run()
    assert res.best == full.best and res.top == full.top
    assert not set(calls[:16]) & set(calls2)  # nothing scored twice
    assert len(calls[:16]) + len(calls2) == full.num_evaluated


def test_resume_rejects_other_config(tmp_path):
    make(tmp_path).run(max_generations=1)
    with pytest.raises(ValueError, match="config"):
        make(tmp_path, population=14).run()


def test_tiny_space_exhausts_without_hanging():
    s = EvolutionSearch(lambda g: float(sum(g)), num_genes=2, num_choices=2,
                        config=EvolutionConfig(generations=5, population=3, select_num=2, mutation_num=1,
                                               crossover_num=1, seed=0))
    res = s.run()
    assert res.num_evaluated == 4 and res.best == (1, 1)


def test_mutation_and_crossover_operators():
    s = make()
    parent = (0,) * 8
    s.config.mutation_prob = 0.0
    assert s._mutate(parent) == parent
    s.config.mutation_prob = 1.0
    muts = [s._mutate(parent) for _ in range(200)]
    assert {v for m in muts for v in m} == {0, 1, 2, 3}
    a, b = (0,) * 8, (1,) * 8
    kids = [s._crossover(a, b) for _ in range(100)]
    assert all(set(k) <= {0, 1} for k in kids)
    frac = sum(sum(k) for k in kids) / 800
    assert 0.4 < frac < 0.6


def test_nan_fitness_is_an_error():
    s = EvolutionSearch(lambda g: float("nan"), num_genes=2, num_choices=2,
                        config=EvolutionConfig(generations=1, population=2, select_num=2, mutation_num=1,
                                               crossover_num=1))
    with pytest.raises(ValueError, match="NaN"):
        s.run()


def test_time_limit_stops_after_a_whole_generation_and_stays_resumable(tmp_path):
    import time as _time

    def slow(g):
        _time.sleep(0.002)
        return match_fitness(g)

    s = make(tmp_path, fitness=slow)
    res = s.run(time_limit_s=0.0)  # the first generation always completes
    assert res.generations_done == 1 and s.stopped_early and not s.done
    full = make(tmp_path / "full").run()
    assert make(tmp_path).run().top == full.top  # resumed to the end
