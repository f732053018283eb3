"""CPU threads of the command line (the library itself never changes them).

:func:`apply_threads` gives PyTorch ``--threads`` threads through ``torch.set_num_threads``; ``auto`` (the default)
is, on CPU runs, the cores idle right now (sampled over 0.2 s), at least one
(:func:`mambaseg.runtime.cpu_threads`). Measured on a 2-core machine (``benchmarks/results/cpu_first_hour*.json``,
VM-UNet-tiny forward+backward, batch 16, 64x64): with other work running, one thread took 1.5-2.2 s and two threads
12.6-29.6 s (each of the scan's thousands of small operations waits at a barrier for a core another program holds);
at low load two threads took 0.53 s and one 0.98 s. So ``auto`` gives every core to an idle machine (as PyTorch's
default does) and one thread to a busy one.

``OMP_WAIT_POLICY=PASSIVE`` (set by the user in the shell) also avoids the collapse with two threads on a busy
machine (1.5-2.0 s) but costs about 40 % on an idle one (0.75 s against 0.53 s), and it can only take effect when
set before PyTorch loads; the CLI leaves it to the user and sets no environment variable.
"""

from __future__ import annotations

from typing import Optional

THREADS_HELP = ("CPU threads: auto (on CPU runs, the cores idle right now, at least 1) or "
                "N. A busy machine is much faster with fewer threads.")


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
