"""SliceMamba search on the CPU: what the supernet's checkpoints hold, their size, and the peak memory, old vs new.

Runs the toy search of the docs (``mambaseg search --data endotect_polyp --supernet-epochs 1 --generations 2
--population 4 --image-size 64 --batch-size 2 --device cpu``, default SliceMamba width) once with the library at
``--old-commit`` and once at ``--new-commit`` (``git archive`` of ``src`` into a temporary folder, a fresh process
each, one after the other), and records per side:

* the bytes of every file in ``OUT/supernet`` and what ``best.pt`` / ``last.pt`` hold (tensor bytes of the weights,
  of the optimizer state and of everything else; read with ``torch.load(weights_only=True)``);
* the process's peak RSS (``wait4``), and the largest RSS sampled every 0.2 s during the supernet training and
  during the evolutionary search;
* the wall time, the architecture found and its fitness (the change must not alter the search);
* every file the search leaves in ``OUT`` and their bytes, the checkpoint files among them (``*.pt``,
  ``*.safetensors``) and what the found network's checkpoint (``OUT/checkpoints/best.pt``, when written) holds.

The supernet's parameter bytes come from a supernet built here with the new code, the found network's from a
``slicemamba`` built from each side's ``arch.json``.

    python benchmarks/search_checkpoints.py     # about 3 minutes on a 2-core machine; needs about 5 GB of RAM

Writes ``benchmarks/results/search_checkpoints_cpu.json`` (or ``--out``). Recorded: ``search_checkpoints_cpu.json``
(81b9d92 vs a4b0ad3: what the supernet's checkpoints hold, peak memory) and ``search_checkpoints_left_cpu.json``
(00bf46f vs the change that leaves only the found network: the files left after the search).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _old_vs_new import DATA, RESULTS, child_env, cpu_environment, extract, load, src_dirty  # noqa: E402

TRAINING_DONE = "validation metrics of the best checkpoint"  # the summary the engine prints after the supernet


def tensor_bytes(obj) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def contents(path: Path) -> dict:
    import torch

    ck = torch.load(path, map_location="cpu", weights_only=True)
    weights = tensor_bytes(ck.get("state_dict"))
    opt = tensor_bytes(ck.get("optimizer"))
    rest = tensor_bytes({k: v for k, v in ck.items() if k not in ("state_dict", "optimizer")})
    return {"file_bytes": path.stat().st_size, "weights_bytes": weights, "optimizer_bytes": opt,
            "other_tensor_bytes": rest, "keys": sorted(ck), "has_optimizer": "optimizer" in ck,
            "optimizer_params_with_state": len((ck.get("optimizer") or {}).get("state") or {})}


def run_search(src: Path, out: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "mambaseg", "search", "--data", str(DATA / "endotect_polyp"), "--supernet-epochs",
           "1", "--generations", "2", "--population", "4", "--image-size", "64", "--batch-size", "2", "--out",
           str(out), "--device", "cpu", "--no-progress"]
    env = child_env(src)
    samples: list[tuple[float, int]] = []
    marks: dict[str, float] = {}
    lines: list[str] = []
    before = load()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    seen_sizes: dict[str, int] = {}  # largest size of each supernet checkpoint while the search ran

    def sample() -> None:
        status = Path(f"/proc/{p.pid}/status")
        while not marks.get("exited"):
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        samples.append((time.perf_counter() - t0, int(line.split()[1]) * 1024))
            except (OSError, ValueError):
                pass
            for name in ("best.pt", "last.pt"):
                try:
                    seen_sizes[name] = max(seen_sizes.get(name, 0), (out / "supernet" / name).stat().st_size)
                except OSError:
                    pass
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    for line in p.stdout:
        lines.append(line.rstrip())
        if TRAINING_DONE in line and "training_done" not in marks:
            marks["training_done"] = time.perf_counter() - t0
    p.stdout.close()
    deadline = time.perf_counter() + timeout
    while True:  # wait4: this child's own peak RSS
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            p.kill()
        time.sleep(0.2)
    p.returncode = os.waitstatus_to_exitcode(status)
    marks["exited"] = time.perf_counter() - t0
    th.join()
    split = marks.get("training_done")
    train_rss = [r for t, r in samples if split is None or t <= split]
    search_rss = [r for t, r in samples if split is not None and t > split]
    files = {f.name: f.stat().st_size for f in sorted((out / "supernet").glob("*")) if f.is_file()}
    res = {"command": " ".join(["python"] + cmd[1:]).replace(str(out), "OUT"), "rc": p.returncode,
           "seconds": round(marks["exited"], 1), "load_before": before, "load_after": load(),
           "peak_rss_bytes": usage.ru_maxrss * 1024,
           "max_sampled_rss_bytes": {"supernet_training": max(train_rss, default=None),
                                     "evolution": max(search_rss, default=None)},
           "supernet_files_bytes": files, "supernet_checkpoint_bytes_seen_during_search": seen_sizes,
           "tail": lines[-3:]}
    for name in ("best.pt", "last.pt"):
        if (out / "supernet" / name).is_file():
            res[name] = contents(out / "supernet" / name)
    left = {f.relative_to(out).as_posix(): f.stat().st_size for f in sorted(out.rglob("*")) if f.is_file()}
    res["files_left_bytes"] = left
    res["checkpoint_files_left_bytes"] = {k: v for k, v in left.items() if k.endswith((".pt", ".safetensors"))}
    res["checkpoint_bytes_left"] = sum(res["checkpoint_files_left_bytes"].values())
    res["all_bytes_left"] = sum(left.values())
    if (out / "checkpoints" / "best.pt").is_file():
        res["found_network_checkpoint"] = contents(out / "checkpoints" / "best.pt")
    arch = out / "arch.json"
    if arch.is_file():
        a = json.loads(arch.read_text())
        res["search"] = {"arch": a["arch"], "fitness": a["fitness"], "supernet_best_val_loss":
                         a["supernet"]["best_val_loss"]}
        res["found_network_param_bytes"] = found_param_bytes(a)
    return res


def found_param_bytes(arch: dict) -> int:
    """Parameter bytes of the ``slicemamba`` that ``arch.json`` describes (built with the code on ``sys.path``)."""
    from mambaseg.models import create_model

    m = create_model("slicemamba", arch=arch["arch"], **(arch.get("model_kwargs") or {}))
    return sum(p.numel() * p.element_size() for p in m.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old-commit", default="00bf46f")  # main before the search left only the found network
    ap.add_argument("--new-commit", default="HEAD")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "search_checkpoints_cpu.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mambaseg_search_ckpt_"))
    import torch

    result: dict = {
        "environment": {**cpu_environment(), "torch": torch.__version__,
                        "memory_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")},
        "data": str(DATA / "endotect_polyp"),
    }
    srcs = {}
    for side, commit in (("old", args.old_commit), ("new", args.new_commit)):
        full = extract(commit, work / side)
        srcs[side] = work / side / "src"
        result[side] = {"commit": full}
    dirty = src_dirty()
    result["new"]["uncommitted_changes_in_src_not_measured"] = dirty
    sys.path.insert(0, str(srcs["new"]))
    from mambaseg.nas.supernet import SliceMambaSupernet

    net = SliceMambaSupernet()
    result["supernet"] = {"params": sum(p.numel() for p in net.parameters()),
                          "param_bytes": sum(p.numel() * p.element_size() for p in net.parameters()),
                          "buffer_bytes": sum(b.numel() * b.element_size() for b in net.buffers())}
    del net
    from mambaseg.models import create_model

    m = create_model("slicemamba")
    result["slicemamba_param_bytes"] = sum(p.numel() * p.element_size() for p in m.parameters())
    del m
    for side in ("old", "new"):
        out = work / f"search_{side}"
        result[side].update(run_search(srcs[side], out, args.timeout))
        shutil.rmtree(out, ignore_errors=True)
        print(side, json.dumps({k: v for k, v in result[side].items() if k != "tail"}), flush=True)
    sys.path.pop(0)
    result["same_search_result"] = result["old"].get("search") == result["new"].get("search")
    result["environment"]["load_average_end"] = load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    gb = 1e9
    print(f"supernet params: {result['supernet']['param_bytes'] / gb:.3f} GB")
    for side in ("old", "new"):
        r = result[side]
        seen = r["supernet_checkpoint_bytes_seen_during_search"]
        print(f"{side}: supernet best.pt {seen.get('best.pt', 0) / gb:.3f} GB, last.pt "
              f"{seen.get('last.pt', 0) / gb:.3f} GB (largest size during the search), peak RSS {r['peak_rss_bytes'] / gb:.2f} GB, "
              f"{r['seconds']} s; left after the search: checkpoints {r['checkpoint_bytes_left'] / gb:.3f} GB "
              f"({', '.join(r['checkpoint_files_left_bytes'])}), all files {r['all_bytes_left'] / gb:.3f} GB; found "
              f"network's parameters {(r.get('found_network_param_bytes') or 0) / gb:.3f} GB")
    print(f"same search result: {result['same_search_result']}; wrote {args.out}")


if __name__ == "__main__":
    main()
