"""The error of the ops tier: a scan backend that was asked for by name cannot run here.

It lives apart from :mod:`mambaseg.ops.backend` (which re-exports it) so that a kernel module can raise it without
importing the module that selects kernels.
"""

from __future__ import annotations

__all__ = ["BackendUnavailableError"]


class BackendUnavailableError(RuntimeError):
    """Raised when a scan backend is requested explicitly but cannot run here."""
