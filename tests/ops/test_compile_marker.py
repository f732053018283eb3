"""The lazy compile marker matches what PyTorch's public decorator sets (so ``import mambaseg`` can skip dynamo)."""

from __future__ import annotations

import subprocess
import sys

import torch

from mambaseg.utils.compile import MARKER


def test_public_decorator_sets_the_same_marker():
    def f():
        return 1

    torch.compiler.assume_constant_result(f)
    assert getattr(f, MARKER, False) is True


def test_marked_functions_carry_the_marker():
    from mambaseg.ops.selective_scan import _resolve
    from mambaseg.ops.selective_scan_torch import default_chunk_size

    assert getattr(_resolve, MARKER) and getattr(default_chunk_size, MARKER)


def test_import_loads_no_compiler():
    """``import mambaseg`` and building a model do not import torch._dynamo."""
    code = ("import sys, mambaseg; assert 'torch' not in sys.modules; mambaseg.create_model('vmunet_tiny'); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
