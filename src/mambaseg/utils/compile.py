"""``assume_constant_result`` without importing the compiler when ``mambaseg`` is imported.

``torch.compiler.assume_constant_result`` imports ``torch._dynamo`` (about 1.5 s of a cold ``import mambaseg`` on
a CPU machine) only to set a marker on the function. The marker is set directly here when the compiler is not
loaded yet; once it is loaded, the public decorator is used. ``tests/ops/test_compile_marker.py`` checks that the
public decorator still sets the same marker, so a change in PyTorch is caught by the tests, not by users.
"""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

#: the attribute torch.compiler.assume_constant_result sets on the function it marks
MARKER = "_dynamo_marked_constant"


def assume_constant_result(fn: F) -> F:
    """Mark ``fn`` as returning a constant under ``torch.compile`` (see ``torch.compiler.assume_constant_result``)."""
    if "torch._dynamo" in sys.modules:
        import torch

        return torch.compiler.assume_constant_result(fn)
    setattr(fn, MARKER, True)
    return fn
