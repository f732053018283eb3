"""The ``mambaseg`` command line (typer + rich).

Each verb lives in its own module (``cli/<verb>.py``) and is registered below with one line. Commands report
failures as ONE line on stderr (``error: ...``) and exit with a non-zero status; ``mambaseg --debug <verb> ...``
(or ``--debug`` anywhere on the command line) shows the full traceback instead.

CPU threads: the long-running verbs take ``--threads`` (default ``auto``); see :mod:`mambaseg.cli.threads` for the
measurements behind it. The CLI sets no environment variable.
"""

from __future__ import annotations

import sys

import typer

from mambaseg.cli._common import state

app = typer.Typer(
    name="mambaseg",
    help="Mamba (state-space) medical image segmentation: train, evaluate, predict, export, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """Mamba medical image segmentation."""
    if version:
        from mambaseg.version import __version__

        typer.echo(f"mambaseg {__version__}")
        raise typer.Exit(0)
    state.debug = state.debug or debug


# ---- verbs: one registration line each
from mambaseg.cli import cache as _cache  # noqa: E402
from mambaseg.cli import convert as _convert  # noqa: E402
from mambaseg.cli import demo as _demo  # noqa: E402
from mambaseg.cli import doctor as _doctor  # noqa: E402
from mambaseg.cli import evaluate as _evaluate  # noqa: E402
from mambaseg.cli import export as _export  # noqa: E402
from mambaseg.cli import models as _models  # noqa: E402
from mambaseg.cli import predict as _predict  # noqa: E402
from mambaseg.cli import recipes as _recipes  # noqa: E402
from mambaseg.cli import score as _score  # noqa: E402
from mambaseg.cli import search as _search  # noqa: E402
from mambaseg.cli import train as _train  # noqa: E402

app.command("demo")(_demo.demo)
app.command("train")(_train.train)
app.command("evaluate")(_evaluate.evaluate)
app.command("predict")(_predict.predict)
app.command("export")(_export.export)
app.command("search")(_search.search)
app.command("cache")(_cache.cache)
app.command("models")(_models.models)
app.command("recipes")(_recipes.recipes)
app.command("doctor")(_doctor.doctor)
app.command("convert")(_convert.convert)
app.command("score")(_score.score)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``mambaseg``). ``--debug`` may appear anywhere on the command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        state.debug = True
        args = [a for a in args if a != "--debug"]
    app(args=args, prog_name="mambaseg")


__all__ = ["app", "main"]
