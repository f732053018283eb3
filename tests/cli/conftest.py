"""Shared by the CLI tests: every test starts and ends with the CLI's --debug switch off (a test that turns it on
must not leave tracebacks in the next one's output)."""

from __future__ import annotations

import pytest

from mambaseg.cli._common import state


@pytest.fixture(autouse=True)
def _no_debug():
    state.debug = False
    yield
    state.debug = False
