"""Evolutionary architecture search over fixed-length integer genomes (SliceMamba's adaptive slicing search).

The search is independent of any network: it needs only a fitness function ``arch -> tuple[float, ...]``
(larger is better, tuples compared lexicographically, e.g. ``(pooled IoU, pooled DSC)``). It follows the
procedure of SPOS-style evolutionary search as used by SliceMamba:

1. generation 0 is ``population`` distinct random genomes;
2. every generation, each not yet scored candidate is scored; the ``select_num`` best genomes seen so far
   form the parent pool;
3. the next generation is ``mutation_num`` mutants (a random parent, each gene resampled uniformly with
   probability ``mutation_prob``), ``crossover_num`` children (two random parents, each gene taken from
   either with probability 1/2) and random genomes up to ``population``; genomes already scored or already
   in the new generation are skipped (at most ``10 x`` the target number of tries each);
4. after ``generations`` generations the best genome seen is returned.

Determinism and resume: all randomness comes from one ``random.Random(seed)`` whose state is stored in the
state file together with every score, the generation counter and the pending candidates. The state is
written atomically after every scored candidate and after every generation, so an interrupted search
resumed from its state file scores no candidate twice and ends with exactly the result of an
uninterrupted run. Every scored candidate is appended to a JSON-lines log.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["EvolutionConfig", "EvolutionSearch", "SearchResult", "Genome", "Fitness", "check_state_config"]

Genome = tuple[int, ...]
Fitness = tuple[float, ...]

STATE_VERSION = 1


@dataclass
class EvolutionConfig:
    """Hyper-parameters of the evolutionary search (defaults = the SliceMamba paper/code).

    Attributes:
        generations: number of scored generations (20).
        population: candidates per generation (50).
        select_num: size of the parent pool, the best genomes seen so far (10).
        mutation_num: mutants per generation (25); ``None`` -> ``population // 2``.
        mutation_prob: per-gene resampling probability of a mutation (0.1).
        crossover_num: crossover children per generation (25); ``None`` -> ``population // 2``.
        seed: seed of the search's random generator.
        max_tries_factor: mutation/crossover give up after ``factor x target`` tries (10).
    """

    generations: int = 20
    population: int = 50
    select_num: int = 10
    mutation_num: int | None = 25
    mutation_prob: float = 0.1
    crossover_num: int | None = 25
    seed: int = 0
    max_tries_factor: int = 10

    def resolved(self) -> EvolutionConfig:
        """Copy with ``None`` counts filled in and every value checked."""
        c = EvolutionConfig(**asdict(self))
        for name in ("generations", "population", "select_num", "max_tries_factor"):
            v = getattr(c, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"EvolutionConfig.{name} must be a positive int, got {v!r}")
        if c.mutation_num is None:
            c.mutation_num = c.population // 2
        if c.crossover_num is None:
            c.crossover_num = c.population // 2
        for name in ("mutation_num", "crossover_num"):
            v = getattr(c, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"EvolutionConfig.{name} must be a non-negative int, got {v!r}")
        if c.mutation_num + c.crossover_num > c.population:
            raise ValueError(
                f"mutation_num ({c.mutation_num}) + crossover_num ({c.crossover_num}) must not exceed "
                f"population ({c.population})"
            )
        if not 0.0 <= float(c.mutation_prob) <= 1.0:
            raise ValueError(f"EvolutionConfig.mutation_prob must be in [0, 1], got {c.mutation_prob!r}")
        return c


@dataclass
class SearchResult:
    """Outcome of a search.

    Attributes:
        best: the best genome seen.
        fitness: its fitness tuple.
        top: the ``select_num`` best ``(genome, fitness)`` pairs, best first.
        num_evaluated: number of distinct genomes scored.
        generations_done: number of completed generations.
    """

    best: Genome
    fitness: Fitness
    top: list[tuple[Genome, Fitness]] = field(default_factory=list)
    num_evaluated: int = 0
    generations_done: int = 0


def _atomic_write_json(path: Path, obj: Any) -> None:
    from mambaseg.utils.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f)


def _key(g: Genome) -> str:
    return ",".join(str(v) for v in g)


def _unkey(s: str) -> Genome:
    return tuple(int(v) for v in s.split(",")) if s else ()


def check_state_config(stored: Any, config: EvolutionConfig, where: str = "the search state") -> None:
    """Refuse a search state written with other evolution settings than ``config`` (compared as JSON stores them).

    Raises:
        ValueError: naming ``where``, both settings and the way out.
    """
    now = json.loads(json.dumps(asdict(config)))
    if stored != now:
        raise ValueError(f"{where} was written with the evolution settings (config) {stored}, not {now}; resume "
                         "with the same settings or use a new --out folder")


class EvolutionSearch:
    """Seeded, resumable evolutionary search.

    Args:
        fitness_fn: scores a genome; returns a float or a tuple of floats (larger is better,
            compared lexicographically).
        num_genes: genome length (22 for SliceMamba).
        num_choices: values per gene, ``0 .. num_choices - 1`` (4 for SliceMamba).
        config: search hyper-parameters.
        state_path: JSON file holding the resumable state (``None``: keep it in memory only).
        log_path: JSON-lines file receiving one record per scored candidate (``None``: no log).
        fitness_names: names of the fitness components, used in the log records.
        progress: show a rich progress bar.

    Example:
        >>> s = EvolutionSearch(lambda g: (sum(g),), num_genes=6, num_choices=4,
        ...                     config=EvolutionConfig(generations=3, population=8, seed=1))
        >>> s.run().best
    """

    def __init__(
        self,
        fitness_fn: Callable[[Genome], float | Sequence[float]],
        *,
        num_genes: int,
        num_choices: int,
        config: EvolutionConfig | None = None,
        state_path: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        fitness_names: Sequence[str] = ("fitness",),
        progress: bool = False,
    ) -> None:
        if isinstance(num_genes, bool) or not isinstance(num_genes, int) or num_genes < 1:
            raise ValueError(f"num_genes must be a positive int, got {num_genes!r}")
        if isinstance(num_choices, bool) or not isinstance(num_choices, int) or num_choices < 1:
            raise ValueError(f"num_choices must be a positive int, got {num_choices!r}")
        self.fitness_fn = fitness_fn
        self.num_genes = num_genes
        self.num_choices = num_choices
        self.config = (config or EvolutionConfig()).resolved()
        self.state_path = Path(state_path) if state_path is not None else None
        self.log_path = Path(log_path) if log_path is not None else None
        self.fitness_names = tuple(fitness_names)
        self.progress = progress
        self.space_size = num_choices**num_genes
        # state
        self.rng = random.Random(self.config.seed)
        self.scores: dict[Genome, Fitness] = {}
        self.order: list[Genome] = []  # scoring order (deterministic tie-breaking)
        self.generation = 0
        self.candidates: list[Genome] = []
        self.history: list[dict[str, Any]] = []
        self.done = False
        self.stopped_early = False

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (see :meth:`load_state_dict`)."""
        ver, internal, gauss = self.rng.getstate()
        return {
            "version": STATE_VERSION,
            "num_genes": self.num_genes,
            "num_choices": self.num_choices,
            "config": asdict(self.config),
            "rng": [ver, list(internal), gauss],
            "scores": [[_key(g), list(self.scores[g])] for g in self.order],
            "generation": self.generation,
            "candidates": [_key(g) for g in self.candidates],
            "history": self.history,
            "done": self.done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict`; the configuration must match."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"search state version {state.get('version')!r} is not supported (expected {STATE_VERSION})"
            )
        if state["num_genes"] != self.num_genes or state["num_choices"] != self.num_choices:
            raise ValueError(
                f"search state is for {state['num_genes']} genes x {state['num_choices']} choices, "
                f"this search has {self.num_genes} x {self.num_choices}"
            )
        check_state_config(state["config"], self.config)
        ver, internal, gauss = state["rng"]
        self.rng.setstate((ver, tuple(internal), gauss))
        self.order = [_unkey(k) for k, _ in state["scores"]]
        self.scores = {_unkey(k): tuple(float(v) for v in f) for k, f in state["scores"]}
        self.generation = int(state["generation"])
        self.candidates = [_unkey(k) for k in state["candidates"]]
        self.history = list(state["history"])
        self.done = bool(state["done"])

    def _save(self) -> None:
        if self.state_path is not None:
            _atomic_write_json(self.state_path, self.state_dict())

    def maybe_resume(self) -> bool:
        """Load ``state_path`` if it exists; returns whether a state was loaded."""
        if self.state_path is not None and self.state_path.is_file():
            with open(self.state_path) as f:
                self.load_state_dict(json.load(f))
            return True
        return False

    # ------------------------------------------------------------ operators
    def _random(self) -> Genome:
        return tuple(self.rng.randrange(self.num_choices) for _ in range(self.num_genes))

    def _mutate(self, parent: Genome) -> Genome:
        p = self.config.mutation_prob
        return tuple(self.rng.randrange(self.num_choices) if self.rng.random() < p else v for v in parent)

    def _crossover(self, a: Genome, b: Genome) -> Genome:
        return tuple(x if self.rng.random() < 0.5 else y for x, y in zip(a, b))

    def top(self, k: int | None = None) -> list[tuple[Genome, Fitness]]:
        """Best ``k`` scored genomes, best first (ties keep scoring order)."""
        ranked = sorted(self.order, key=lambda g: self.scores[g], reverse=True)
        k = len(ranked) if k is None else k
        return [(g, self.scores[g]) for g in ranked[:k]]

    def _fill(self, out: list[Genome], target: int, make: Callable[[], Genome], tries: int) -> None:
        seen = set(out)
        goal = len(out) + target
        for _ in range(tries):
            if len(out) >= goal:
                break
            g = make()
            if g in self.scores or g in seen:
                continue
            out.append(g)
            seen.add(g)

    def _next_generation(self) -> list[Genome]:
        cfg = self.config
        parents = [g for g, _ in self.top(cfg.select_num)]
        new: list[Genome] = []
        f = cfg.max_tries_factor
        if parents:
            self._fill(new, cfg.mutation_num, lambda: self._mutate(self.rng.choice(parents)), f * cfg.mutation_num)
            self._fill(
                new,
                cfg.crossover_num,
                lambda: self._crossover(self.rng.choice(parents), self.rng.choice(parents)),
                f * cfg.crossover_num,
            )
        remaining = max(0, min(cfg.population - len(new), self.space_size - len(self.scores) - len(new)))
        self._fill(new, remaining, self._random, max(100, f * cfg.population) * 10)
        return new

    # ------------------------------------------------------------------ run
    def _score(self, g: Genome) -> Fitness:
        raw = self.fitness_fn(g)
        if isinstance(raw, (int, float)):
            fit: Fitness = (float(raw),)
        else:
            fit = tuple(float(v) for v in raw)
        if not fit or any(math.isnan(v) for v in fit):
            raise ValueError(f"fitness_fn returned an empty or NaN fitness {raw!r} for genome {g}")
        return fit

    def _log(self, record: dict[str, Any]) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def run(self, resume: bool = True, max_generations: int | None = None,
            time_limit_s: float | None = None) -> SearchResult:
        """Run (or continue) the search.

        Args:
            resume: continue from ``state_path`` when it exists.
            max_generations: stop after this many generations in this call (to test resuming); the
                state stays resumable.
            time_limit_s: stop after the first generation that ends past this many seconds of this call
                (the result is the best genome so far; the state stays resumable).

        Returns:
            The :class:`SearchResult` over everything scored so far.
        """
        if resume:
            self.maybe_resume()
        cfg = self.config
        if not self.done and self.generation == 0 and not self.candidates and not self.scores:
            self._fill(self.candidates, min(cfg.population, self.space_size), self._random, 1000 * cfg.population)
            self._save()
        bar = None
        plain = None  # not a terminal: one plain line per 30 s instead of a live bar (utils/progress.py)
        if self.progress and not self.done:
            from rich.console import Console

            from mambaseg.utils.progress import ProgressReporter, is_terminal

            console = Console()
            if not is_terminal(console):
                plain = ProgressReporter(console, "search: candidates scored", total=cfg.generations * cfg.population)
                plain.__enter__()
        if self.progress and not self.done and plain is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(
                TextColumn("[bold]search[/] gen {task.fields[gen]}/{task.fields[gens]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("best {task.fields[best]}"),
                TimeElapsedColumn(),
            )
            bar.start()
            task = bar.add_task("search", total=cfg.generations * cfg.population, gen=self.generation,
                                gens=cfg.generations, best="-")
            bar.update(task, completed=self.generation * cfg.population)
        ran = 0
        t_start = time.perf_counter()
        self.stopped_early = False
        try:
            while not self.done:
                if max_generations is not None and ran >= max_generations:
                    self.stopped_early = True
                    break
                if time_limit_s is not None and ran > 0 and time.perf_counter() - t_start > time_limit_s:
                    self.stopped_early = True
                    break
                for g in self.candidates:
                    if g in self.scores:
                        if bar is not None:
                            bar.advance(task)
                        continue
                    t0 = time.perf_counter()
                    fit = self._score(g)
                    self.scores[g] = fit
                    self.order.append(g)
                    rec = {"generation": self.generation, "arch": list(g), "fitness": list(fit),
                           "seconds": round(time.perf_counter() - t0, 4)}
                    rec.update({n: v for n, v in zip(self.fitness_names, fit)})
                    self._log(rec)
                    self._save()
                    if bar is not None:
                        best = self.top(1)[0][1]
                        bar.update(task, advance=1, best=", ".join(f"{v:.4f}" for v in best))
                    if plain is not None:
                        best = self.top(1)[0][1]
                        plain.update(len(self.scores), info="best " + ", ".join(f"{v:.4f}" for v in best))
                best_g, best_f = self.top(1)[0]
                self.history.append({"generation": self.generation, "best_arch": list(best_g),
                                     "best_fitness": list(best_f), "num_evaluated": len(self.scores)})
                self.generation += 1
                ran += 1
                if self.generation >= cfg.generations:
                    self.done = True
                    self.candidates = []
                else:
                    self.candidates = self._next_generation()
                    if not self.candidates:  # search space exhausted
                        self.done = True
                self._save()
                if bar is not None:
                    bar.update(task, gen=self.generation)
        finally:
            if bar is not None:
                bar.stop()
            if plain is not None:
                plain.__exit__(None, None, None)
        return self.result()

    def result(self) -> SearchResult:
        """The best genome and the parent pool over everything scored so far."""
        if not self.scores:
            raise RuntimeError("no candidate has been scored yet")
        top = self.top(self.config.select_num)
        return SearchResult(best=top[0][0], fitness=top[0][1], top=top, num_evaluated=len(self.scores),
                            generations_done=self.generation)
