"""Build the official ``selective_scan_cuda`` extension (state-spaces/mamba, ``csrc/selective_scan``) for one GPU
architecture, with the nvcc flags of mamba's ``setup.py``, into a folder outside the repository.

The sources are the fetched ones in ``.official/mamba/csrc/selective_scan`` (never committed). The build goes through
``torch.utils.cpp_extension.load`` (ninja, ``MAX_JOBS`` parallel jobs: set it in this process's environment, e.g.
``MAX_JOBS=16``); the result ``BUILD/selective_scan_cuda*.so`` is imported by the drivers as ``selective_scan_cuda``
after ``sys.path.insert(0, BUILD)``, which is what ``mamba_ssm/ops/selective_scan_interface.py`` imports.
A folder that already holds a loadable build is reused (the full build takes 2-3 minutes on 16 cores).

``--dtypes fp32`` compiles only the official translation units of fp32 inputs (``selective_scan_fwd_fp32.cu``,
``selective_scan_bwd_fp32_real.cu``, unchanged, same flags) and links the other input/weight types to stubs that raise
(a small ``.cu`` written by this script into the build folder). VM-UNet (fp32, no AMP) and DermoMamba (its SS2D casts
u, delta, B, C to float before the scan, also under fp16 autocast) only ever call the fp32/real kernels, so their
runs are the same; the build is about twice as fast. If that build fails to load, the full build follows.

Usage (GPU machine)::

    MAX_JOBS=16 python benchmarks/official/build_selective_scan.py --out /tmp/recipe_wall/ss_build --arch 90
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / ".official" / "mamba" / "csrc" / "selective_scan"

# mamba setup.py (commit e9594ce): the sources of the CUDAExtension "selective_scan_cuda"
SOURCES = ["selective_scan.cpp", "selective_scan_fwd_fp32.cu", "selective_scan_fwd_fp16.cu",
           "selective_scan_fwd_bf16.cu", "selective_scan_bwd_fp32_real.cu", "selective_scan_bwd_fp32_complex.cu",
           "selective_scan_bwd_fp16_real.cu", "selective_scan_bwd_fp16_complex.cu", "selective_scan_bwd_bf16_real.cu",
           "selective_scan_bwd_bf16_complex.cu"]
# its extra_compile_args (the non-HIP branch); append_nvcc_threads adds "--threads 4"; the -gencode list is reduced
# to the one architecture of the machine
CXX_FLAGS = ["-O3", "-std=c++17"]
NVCC_FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__", "--expt-relaxed-constexpr",
              "--expt-extended-lambda", "--use_fast_math", "--ptxas-options=-v", "-lineinfo"]


# fp32 inputs with real weights are the only kernels VM-UNet and DermoMamba call (see the docstring)
FP32_SOURCES = ["selective_scan.cpp", "selective_scan_fwd_fp32.cu", "selective_scan_bwd_fp32_real.cu"]
STUB_INSTANCES = {"fwd": [("at::Half", "float"), ("at::Half", "complex_t"), ("at::BFloat16", "float"),
                          ("at::BFloat16", "complex_t")],
                  "bwd": [("float", "complex_t"), ("at::Half", "float"), ("at::Half", "complex_t"),
                          ("at::BFloat16", "float"), ("at::BFloat16", "complex_t")]}


def stub_source() -> str:
    """Explicit specialisations (same symbols as the official explicit instantiations) that raise when called."""
    lines = ['#include <c10/util/BFloat16.h>', '#include <c10/util/Half.h>', '#include <c10/util/Exception.h>',
             '#include "selective_scan.h"', '#include "selective_scan_common.h"',
             "template<typename input_t, typename weight_t>",
             "void selective_scan_fwd_cuda(SSMParamsBase &params, cudaStream_t stream);",
             "template<typename input_t, typename weight_t>",
             "void selective_scan_bwd_cuda(SSMParamsBwd &params, cudaStream_t stream);"]
    for kind, params in (("fwd", "SSMParamsBase"), ("bwd", "SSMParamsBwd")):
        for itype, wtype in STUB_INSTANCES[kind]:
            lines.append(f"template<> void selective_scan_{kind}_cuda<{itype}, {wtype}>({params} &, cudaStream_t) "
                         f'{{ TORCH_CHECK(false, "selective_scan_cuda was built for fp32 inputs with real weights '
                         f'only; {kind} <{itype}, {wtype}> is not in this build"); }}')
    return "\n".join(lines) + "\n"


def built(out: Path) -> str | None:
    found = sorted(glob.glob(str(out / "selective_scan_cuda*.so")))
    return found[0] if found else None


def try_import(out: Path) -> str | None:
    """None when ``selective_scan_cuda`` imports from ``out``, else the error."""
    import subprocess

    code = f"import sys, torch; sys.path.insert(0, {str(out)!r}); import selective_scan_cuda; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]


def build(out: Path, arch: str, verbose: bool, dtypes: str = "all") -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if built(out) and try_import(out) is None:
        return {"built": False, "reused": built(out), "seconds": 0.0}
    import shutil
    import subprocess

    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    missing = [s for s in SOURCES if not (SRC / s).is_file()]
    if missing:
        raise SystemExit(f"missing official sources in {SRC}: {missing}")
    nvcc = NVCC_FLAGS + [f"-gencode=arch=compute_{arch},code=sm_{arch}", "--threads", "4"]
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=f"{arch[:-1]}.{arch[-1]}")
    tries = [dtypes] if dtypes == "all" else [dtypes, "all"]
    log = []
    t_all = time.time()
    for kind in tries:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        sources = [str(SRC / s) for s in (SOURCES if kind == "all" else FP32_SOURCES)]
        if kind != "all":
            (out / "stubs").mkdir()
            stub = out / "stubs" / "selective_scan_other_dtypes_stub.cu"
            stub.write_text(stub_source())
            sources.append(str(stub))
        # a child process: a failed load() must not leave a half-initialised extension in this one
        code = ("import sys, json; from torch.utils.cpp_extension import load; a = json.loads(sys.argv[1]); "
                "load(name='selective_scan_cuda', sources=a['sources'], extra_cflags=a['cxx'], "
                "extra_cuda_cflags=a['nvcc'], extra_include_paths=[a['inc']], build_directory=a['out'], "
                "verbose=a['verbose'])")
        payload = json.dumps({"sources": sources, "cxx": CXX_FLAGS, "nvcc": nvcc, "inc": str(SRC), "out": str(out),
                              "verbose": verbose})
        t = time.time()
        r = subprocess.run([sys.executable, "-c", code, payload], env=env, text=True,
                           stdout=None if verbose else subprocess.PIPE, stderr=subprocess.STDOUT)
        seconds = time.time() - t
        err = None if r.returncode == 0 else (r.stdout or "")[-3000:]
        if err is None:
            err = try_import(out) if built(out) else "no .so produced"
        log.append({"dtypes": kind, "seconds": round(seconds, 1), "error": err})
        if err is None:
            return {"built": True, "dtypes": kind, "so": built(out), "seconds": round(time.time() - t_all, 1),
                    "tries": log, "sources": [Path(s).name for s in sources], "nvcc_flags": nvcc,
                    "cxx_flags": CXX_FLAGS, "max_jobs": os.environ.get("MAX_JOBS"), "cuda_home": CUDA_HOME,
                    "torch": torch.__version__}
        print(f"build ({kind}) failed after {seconds:.0f} s:\n{err}", file=sys.stderr, flush=True)
    raise SystemExit(f"selective_scan_cuda could not be built: {log}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="build folder (outside the repository, e.g. /tmp/...)")
    ap.add_argument("--arch", default=None, help="compute capability without dot (default: the current GPU's)")
    ap.add_argument("--dtypes", choices=["all", "fp32"], default="all",
                    help="all: the official full build; fp32: only the kernels these models call (see above)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the build record here")
    args = ap.parse_args(argv)
    arch = args.arch
    if arch is None:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: pass --arch (e.g. 90)")
        major, minor = torch.cuda.get_device_capability()
        arch = f"{major}{minor}"
    rec = build(args.out.resolve(), arch, args.verbose, args.dtypes)
    rec["arch"] = arch
    print(json.dumps(rec), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
