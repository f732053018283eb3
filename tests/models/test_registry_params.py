"""Every parameter count stated at registration is the count of the model built with its defaults."""

from __future__ import annotations

import pytest

from mambaseg.cli.models import count_params
from mambaseg.models import list_models, model_info


@pytest.mark.parametrize("name", list_models())
def test_stated_parameter_count_is_exact(name):
    info = model_info(name)
    assert info.params is not None, f"register {name!r} with params=..."
    assert info.params == count_params(name)


def test_models_verb_builds_no_model(monkeypatch):
    from typer.testing import CliRunner

    import mambaseg.cli.models as verb
    from mambaseg.cli import app

    monkeypatch.setattr(verb, "count_params", lambda name: pytest.fail(f"built {name}"))
    res = CliRunner().invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    assert '"params": 27427561' in res.output
