"""``mambaseg recipes``: the shipped training recipes with their model, data size, schedule and description."""

from __future__ import annotations

import json
from typing import Optional

import typer

from mambaseg.cli._common import console, handle_errors


def recipe_rows(pattern: Optional[str] = None) -> list[dict]:
    """One row per shipped recipe (resolved through ``base:``): name, model, image size, epochs, batch, loss,
    schedule and description."""
    import fnmatch

    from mambaseg.configs import list_recipes, load_recipe

    rows = []
    for name in list_recipes():
        if pattern and not fnmatch.fnmatch(name, pattern):
            continue
        cfg = load_recipe(name)
        sched = cfg.schedule.name + (f" T_max {cfg.schedule.t_max}" if cfg.schedule.t_max else "")
        rows.append({"name": name, "model": cfg.model.name, "image_size": list(cfg.data.image_size),
                     "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size, "loss": cfg.loss.name,
                     "schedule": f"{sched} per {cfg.schedule.interval}", "description": cfg.description})
    return rows


@handle_errors
def recipes(
    pattern: Optional[str] = typer.Argument(None, help="Shell-style filter, e.g. 'vmunet*'."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List the shipped recipes (use one with `mambaseg train --recipe NAME --data PATH`)."""
    rows = recipe_rows(pattern)
    if not rows:
        from mambaseg.configs import list_recipes

        hint = f"; patterns are shell-style: '*{pattern}*' matches names that contain it" if "*" not in pattern else ""
        raise ValueError(f"no shipped recipe matches {pattern!r}{hint}. Recipes: {', '.join(list_recipes())}")
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="mambaseg recipes (mambaseg train --recipe NAME)")
    for col in ("name", "model", "size", "epochs", "loss"):
        table.add_column(col, style="bold" if col == "name" else None, no_wrap=True)
    for r in rows:
        table.add_row(r["name"], r["model"], "x".join(str(v) for v in r["image_size"]), str(r["epochs"]), r["loss"])
    console.print(table)
    console.print("batch size, schedule and description of each: mambaseg recipes --json", style="dim")
