"""CPU threads of the command line (the library itself never changes them).

Two things, both for the ``mambaseg`` process only:

* :func:`prefer_passive_waiting` runs when the CLI package is imported, before PyTorch is: when the user has not
  set ``OMP_WAIT_POLICY`` it sets ``PASSIVE``, so OpenMP threads that finished their share of an operation sleep
  instead of spinning. On a busy machine the spinning threads take the cores the others wait for; a VM-UNet-tiny
  training step with two threads on a loaded 2-core machine took 12.6-29.6 s spinning and 1.5-2.0 s passive
  (benchmarks/results/cpu_first_hour.json). PyTorch reads this variable only when it is loaded, so there is no
  PyTorch API for it; a user's own value always wins.
* :func:`apply_threads` gives PyTorch ``--threads`` threads (``auto``: the cores the load average leaves free, see
  :func:`mambaseg.runtime.cpu_threads`) through ``torch.set_num_threads``.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

THREADS_HELP = ("CPU threads: auto (on CPU runs, the cores the 1-minute load average leaves free, at least 1) or "
                "N. A busy machine is much faster with fewer threads.")


def prefer_passive_waiting() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` for this process when the user has not set it and PyTorch is not loaded yet."""
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def apply_threads(spec: Optional[str], device: Optional[str] = None) -> int:
    """``torch.set_num_threads`` with ``--threads`` (``auto`` or N); returns the number in use.

    ``auto`` leaves PyTorch's default alone when ``device`` runs on CUDA (``cuda``, ``cuda:N``, or ``auto`` with a
    GPU present): the scan then runs on the GPU and the CPU threads serve data loading; a number is always applied.
    """
    import torch

    from mambaseg.runtime import cpu_threads

    auto = spec is None or str(spec).strip().lower() in ("", "auto")
    dev = (device or "cpu").strip().lower()
    if auto and (dev.startswith("cuda") or (dev == "auto" and torch.cuda.is_available())):
        return torch.get_num_threads()
    n = cpu_threads(spec)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
