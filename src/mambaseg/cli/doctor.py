"""``mambaseg doctor``: what this machine can run (torch, CUDA, GPUs, Triton, scan backends) and how to fix gaps."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import platform
import sys
from typing import Any

import typer

from mambaseg.cli._common import console, handle_errors

_CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
_CUDA_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cu126  (pick the CUDA version of your driver)"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """Environment facts and suggested fixes (no side effects)."""
    import torch

    from mambaseg.ops import available_backends, explain_backend
    from mambaseg.ops.backend import ENV_VAR, requested_backend_problem
    from mambaseg.version import __version__

    cuda_ok = torch.cuda.is_available()
    gpus = []
    if cuda_ok:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                         "memory_gib": round(p.total_memory / 2**30, 1)})
    backends = {n: {"available": s.available, "reason": s.reason, "cuda_only": s.cuda_only}
                for n, s in available_backends().items()}
    info: dict[str, Any] = {
        "mambaseg": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": cuda_ok,
        "gpus": gpus,
        "bf16_supported": bool(cuda_ok and torch.cuda.is_bf16_supported()),
        "triton": _version("triton"),
        "mamba_ssm": _version("mamba-ssm") or _version("mamba_ssm"),
        "scan_backends": backends,
        "auto_backend_cpu": explain_backend(False),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "auto_backend_cuda": explain_backend(True) if cuda_ok else None,
    }
    fixes: list[str] = []
    for is_cuda, kind in ((False, "CPU"), (True, "CUDA")):
        problem = requested_backend_problem(is_cuda) if (cuda_ok or not is_cuda) else None
        if problem:
            fixes.append(f"the requested scan backend cannot run on {kind} tensors here, so every model run on them "
                         f"fails: {problem}. Unset {ENV_VAR} (auto picks a backend that runs) or request another")
    if not cuda_ok:
        if torch.version.cuda is None:
            fixes.append(f"torch is a CPU-only build: training runs on CPU (slow for full-size models). For a GPU: "
                         f"{_CUDA_TORCH}")
        else:
            fixes.append(f"torch has CUDA {torch.version.cuda} but no GPU is visible: check the NVIDIA driver "
                         "(nvidia-smi) and that the process may see a GPU")
    if not backends["cpu_fused"]["available"]:
        from mambaseg.ops.selective_scan_cpu import FIX as _CPU_FIX

        fixes.append(f"no fused CPU scan kernel ({backends['cpu_fused']['reason']}): CPU inference and training use "
                     f"the slower PyTorch scan. Fix: {_CPU_FIX}")
    if cuda_ok:
        if not backends["triton"]["available"]:
            fixes.append(f"no Triton scan kernel ({backends['triton']['reason']}): training on GPU uses the slow "
                         "PyTorch scan. Fix: pip install 'triton>=3.0' (matching your torch build)")
    for dist in ("typer", "rich", "safetensors", "opencv-python-headless", "pyyaml"):
        if _version(dist) is None and not (dist == "opencv-python-headless" and importlib.util.find_spec("cv2")):
            fixes.append(f"missing dependency {dist}: pip install {dist}")
    if _version("tensorboard") is None:
        fixes.append("tensorboard is not installed: runs will have no TensorBoard events (pip install tensorboard)")
    info["fixes"] = fixes
    return info


@handle_errors
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Check torch, CUDA, GPUs, Triton and which selective-scan backend runs on CPU and GPU (and why), with fixes."""
    info = collect()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    t = Table(title="mambaseg doctor", show_header=False)
    t.add_column("item", style="bold")
    t.add_column("value")
    t.add_row("mambaseg", info["mambaseg"])
    t.add_row("python", f"{info['python']} ({info['platform']})")
    t.add_row("torch", f"{info['torch']} (CUDA build: {info['torch_cuda_build'] or 'none, CPU only'})")
    t.add_row("CUDA available", str(info["cuda_available"]))
    for g in info["gpus"]:
        t.add_row(f"GPU {g['index']}", f"{g['name']} (sm {g['capability']}, {g['memory_gib']} GiB)")
    t.add_row("bf16 autocast", "yes" if info["bf16_supported"] else "no (CPU or old GPU: fp32)")
    t.add_row("triton", info["triton"] or "not installed")
    t.add_row("mamba_ssm", info["mamba_ssm"] or "not installed")
    for name, b in info["scan_backends"].items():
        mark = "[green]ok[/green]" if b["available"] else "[red]no[/red]"
        t.add_row(f"scan backend {name}", f"{mark} - {b['reason']}" + (" (CUDA only)" if b["cuda_only"] else ""))
    t.add_row("backend for CPU tensors", info["auto_backend_cpu"])
    t.add_row("CPU", f"{info['cpu_capability']}, torch uses {info['cpu_threads']} threads")
    if info["auto_backend_cuda"]:
        t.add_row("backend for CUDA tensors", info["auto_backend_cuda"])
    console.print(t)
    if info["fixes"]:
        console.print("[bold yellow]fixes:[/bold yellow]")
        for f in info["fixes"]:
            console.print(f"  - {f}", highlight=False, markup=False)
    else:
        console.print("[bold green]everything needed is installed[/bold green]")
