"""Surfaces and lines on the real 60,000-example split: today's code beside a baseline commit's, alternated in one
run (``make bench``), each in its own process with one torch thread.

    python -m benchmarks.paths_speed [--baseline COMMIT] [--rounds 2]

Workload: the 784-256-256-10 ReLU MLP of benchmarks/probe_speed.py (one epoch of SGD on the full-size local
copy) and its initialization; the surface stage's default 21 × 21 filter-normalized plane around it on the whole
training split, and a 21-point line from the initialization to it on the train and test splits (what the
interpolate stage does, and the connect stage between its two copies). Three variants per round: the baseline
commit, today's code, and today's code with glibc's allocator defaults (``LANDSCAPE_SYSTEM_MALLOC=1``), so the
first-layer factorization and the allocator setting are measured apart. Values of today's code are compared
with the baseline's point by point. Results: benchmarks/results/paths_speed.json.
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

import torch

from benchmarks.probe_speed import _workload
from landscape.io import write_json

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "results" / "paths_speed.json"
BASELINE = "2e25f07"  # main before the factorized evaluator (issue 20): "today's time" in the issue


def _run(checkout: Path, work: Path, **env_extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OPENBLAS_NUM_THREADS": "1", **env_extra}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paths_child.py"), str(work)], cwd=checkout,
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work.pt"
        data = _workload(work)
        if not data:
            print("paths speed: no full-size local copy of MNIST or Fashion-MNIST (make data, or "
                  "apt-get install dataset-fashion-mnist): nothing measured")
            return
        blob = torch.load(work, weights_only=True)
        torch.manual_seed(0)  # the initialization of the workload's model (MLP draws it first)
        from landscape.models import MLP

        blob["start"] = MLP(784, [256, 256], "relu", 10).state_dict()
        torch.save(blob, work)
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(base), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            runs: dict[str, list[dict]] = {"baseline": [], "today": [], "today_system_malloc": []}
            for _ in range(args.rounds):
                runs["baseline"].append(_run(base, work))
                runs["today"].append(_run(ROOT, work))
                runs["today_system_malloc"].append(_run(ROOT, work, LANDSCAPE_SYSTEM_MALLOC="1"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    result: dict = {"data": data, "baseline_commit": args.baseline, "rounds": args.rounds, "threads": 1,
                    "surface_points": 441, "line_points": 21}
    for name, rs in runs.items():
        result[name] = {k: statistics.median(r[k] for r in rs) for k in ("surface_s", "line_s")}
        result[name]["all"] = [{k: r[k] for k in ("surface_s", "line_s")} for r in rs]
    b, t = runs["baseline"][0], runs["today"][0]
    result["max_relative_difference"] = {k: _max_rel(t[k], b[k]) for k in ("surface_loss", "line_loss",
                                                                           "line_test_loss")}
    result["bit_identical_between_rounds"] = all(r["surface_loss"] == t["surface_loss"] for r in runs["today"])
    for name in ("today", "today_system_malloc"):
        result[f"{name}_over_baseline"] = {k: result[name][k] / result["baseline"][k] for k in ("surface_s", "line_s")}
    write_json(OUT, result)
    print(f"\nsurface (21×21) and line (21 points, train + test) on {data['dataset']} ({data['via']}, "
          f"{data['train']:,} train), 1 thread, median of {args.rounds} alternating rounds")
    for name in runs:
        r = result[name]
        print(f"  {name:20s}: surface {r['surface_s']:6.1f} s ({r['surface_s'] / 441:.3f} s/point), "
              f"line {r['line_s']:5.1f} s")
    print("  today / baseline: surface {surface_s:.2f}×, line {line_s:.2f}×".format(**result["today_over_baseline"]))
    print("  (today with glibc's allocator defaults: surface {surface_s:.2f}×, line {line_s:.2f}×)".format(
        **result["today_system_malloc_over_baseline"]))
    print("  largest relative difference from the baseline's values: " + ", ".join(
        f"{k} {v:.1e}" for k, v in result["max_relative_difference"].items()))


if __name__ == "__main__":
    main()
