"""VM-UNet forward on CPU (torch scan) vs CUDA (every available CUDA scan backend), fp32, same weights and input.

Usage (GPU machine): python benchmarks/gpu_cpu_parity.py
Writes benchmarks/results/gpu_cpu_parity.json with the max abs / relative L2 differences of the logits.
"""

from __future__ import annotations

import torch

import mambaseg
from _common import environment, write_json
from mambaseg.ops import available_backends, use_backend


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = mambaseg.create_model("vmunet", num_classes=1).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        ref = model(x)
    rows = []
    model = model.cuda()
    for name, st in available_backends().items():
        if name in ("ref", "cpu_fused") or not st.available:  # cpu_fused runs CPU tensors only (refused on CUDA)
            continue
        with use_backend(name), torch.inference_mode():  # the SS2D layers' backend is None: the context applies
            y = model(x.cuda()).cpu()
        rows.append({
            "backend": name,
            "max_abs_diff": (y - ref).abs().max().item(),
            "rel_l2": ((y - ref).norm() / ref.norm()).item(),
            "logit_abs_max": ref.abs().max().item(),
        })
        print(rows[-1], flush=True)
    print(write_json("gpu_cpu_parity.json", {"benchmark": "gpu_cpu_parity", "model": "vmunet",
                                             "input": [1, 3, 256, 256], "tf32": False, **environment(), "rows": rows}))


if __name__ == "__main__":
    main()
