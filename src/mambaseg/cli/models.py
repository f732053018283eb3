"""``mambaseg models``: the registered models with their parameter counts and papers."""

from __future__ import annotations

import json
from typing import Optional

import typer

from mambaseg.cli._common import console, handle_errors


def count_params(name: str) -> int:
    """Parameters of ``create_model(name)`` with its defaults (built on the meta device when possible)."""
    import torch

    from mambaseg.models import create_model

    try:
        with torch.device("meta"):
            model = create_model(name)
    except Exception:  # some constructors compute on real tensors: build on CPU instead
        model = create_model(name)
    return int(sum(p.numel() for p in model.parameters()))


@handle_errors
def models(
    pattern: Optional[str] = typer.Argument(None, help="Shell-style filter, e.g. 'vmunet*'."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {name, params, paper, description}."),
) -> None:
    """List the registered models (name, parameters, paper); counts come from the registry (1 class, 3 channels)."""
    from mambaseg.models import list_models, model_info

    names = list_models(pattern)
    if not names:
        hint = f"; patterns are shell-style: '*{pattern}*' matches names that contain it" if "*" not in pattern else ""
        raise ValueError(f"no registered model matches {pattern!r}{hint}. Models: {', '.join(list_models())}")
    rows = []
    for name in names:
        info = model_info(name)
        params = info.params if info.params is not None else count_params(name)  # stated at registration
        rows.append({"name": name, "params": params, "paper": info.paper, "description": info.description})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="mambaseg models")
    table.add_column("name", style="bold")
    table.add_column("params", justify="right")
    table.add_column("paper")
    for r in rows:
        table.add_row(r["name"], f"{r['params'] / 1e6:.2f} M", r["paper"])
    console.print(table)
    console.print("descriptions: mambaseg models --json", style="dim")
