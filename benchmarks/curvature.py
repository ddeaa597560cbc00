"""Curvature benchmarks — ratios measured side by side in one process; not tests.

    python -m benchmarks.curvature            (or: make bench)

1. HVP routes: cost of one Hessian-vector product as a multiple of one gradient on the same batch.
2. λ_max against PyHessian 0.1 (if installed: ``pip install --no-deps pyhessian==0.1``): time and
   Hessian-vector products to reach its accuracy, at a trained 784-256-256-10 checkpoint, 2,048 samples.
3. tr(H): the spread over seeds of Hutchinson and Hutch++ at equal products.
   Probe overhead: one default probe as a fraction of one default training epoch (also on a 60k-example
   timing workload).
4. Scaling: HVP time and the memory (RSS) the operator holds across widths 256/512/1024 (each width in its own process).
Results go to benchmarks/results/curvature.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp

from landscape.config import ProbeConfig
from landscape.curvature.eigenvalues import lanczos, power_iteration
from landscape.curvature.hvp import HessianOperator
from landscape.curvature.trace import hutchinson_trace, hutchpp_trace
from landscape.data import NORMALIZATION
from landscape.sources import offline_mnist
from landscape.geometry import probe
from landscape.io import write_json
from landscape.models import MLP
from landscape.parameters import flatten, unflatten

OUT = Path(__file__).parent / "results" / "curvature.json"
STARTS = ("random+gradient", "random")  # Lanczos start vectors (the first is the default)
TOLS = (1e-1, 3e-2, 1e-2, 1e-3, 1e-4)


def data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    raw = offline_mnist(0)
    mean, std = NORMALIZATION["mnist"]

    def prep(x, y):
        return (torch.from_numpy(x.reshape(len(x), -1).copy()).float() / 255 - mean) / std, torch.from_numpy(y.copy())

    return prep(raw.x_train, raw.y_train), prep(raw.x_test, raw.y_test)


def train_epochs(model: torch.nn.Module, x, y, epochs: int, lr=0.05, bs=128, seed=0) -> float:
    """Plain SGD(0.9) epochs; returns the mean wall time of one epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x), generator=g)
        model.train()
        for i in range(0, len(x), bs):
            idx = perm[i : i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    return statistics.mean(times)


def hvp_routes(model, x, y) -> dict:
    params = list(model.parameters())
    theta = flatten(model)
    v = torch.randn(theta.numel())

    def gradient():
        torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), params)

    analytic = HessianOperator(model, x, y, chunk_size=len(x))
    cached = HessianOperator(model, x, y, chunk_size=len(x), analytic=False)
    fresh = HessianOperator(model, x, y, chunk_size=len(x), keep_graph=False)

    def loss_of(t):
        return F.cross_entropy(functional_call(model, unflatten(t, model), (x,)), y)

    def fwd_over_rev():
        jvp(grad(loss_of), (theta,), (v,))

    def autograd_hvp():
        torch.autograd.functional.hvp(loss_of, theta, v)

    routes = {"gradient": gradient,
              "analytic_rop_cached": lambda: analytic.matvec(v),
              "cached_graph_double_backward": lambda: cached.matvec(v),
              "fresh_double_backward": lambda: fresh.matvec(v),
              "torch_func_forward_over_reverse": fwd_over_rev,
              "autograd_functional_hvp": autograd_hvp}
    t = interleaved(routes)
    res = {"gradient_s": t.pop("gradient")}
    for name, sec in t.items():
        res[name] = {"seconds": sec, "ratio_to_gradient": sec / res["gradient_s"]}
    return res


def interleaved(fns: dict, rounds: int = 25) -> dict:
    """Median wall time of each function, run round-robin so that machine drift hits all alike."""
    for fn in fns.values():
        fn()
    ts: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def against_pyhessian(model, x, y, seeds=(0, 1, 2), rounds: int = 3) -> dict:
    """Time to λ_max and its error for PyHessian and for each Lanczos setting, per seed. Every (method,
    seed) run is repeated ``rounds`` times round-robin with the others (so drift hits all alike) and its
    median time is reported; products and errors are deterministic per seed."""
    ref = lanczos(HessianOperator(model, x, y, chunk_size=len(x)), k=1, max_iters=200, tol=1e-10).lambda_max
    out: dict = {"reference_lambda_max": ref, "rounds": rounds}
    methods: dict = {}
    try:
        import importlib

        ph = importlib.import_module("pyhessian.hessian")  # the module (the package re-exports the class)
    except ImportError:
        out["pyhessian"] = "not installed (pip install --no-deps pyhessian==0.1)"
    else:
        counter = {"n": 0}
        original = ph.hessian_vector_product

        def counted(*a, **k):
            counter["n"] += 1
            return original(*a, **k)

        ph.hessian_vector_product = counted

        def pyhessian_run(seed):
            torch.manual_seed(seed)
            counter["n"] = 0
            t0 = time.perf_counter()
            h = ph.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
            lam = h.eigenvalues(maxIter=100, tol=1e-3)[0][0]
            sec = time.perf_counter() - t0
            model.zero_grad(set_to_none=True)
            return sec, {"hvps": counter["n"], "rel_error": abs(lam - ref) / abs(ref)}

        methods["pyhessian"] = pyhessian_run

    def lanczos_run(start, tol):
        def run(seed):
            t0 = time.perf_counter()
            op = HessianOperator(model, x, y, chunk_size=len(x))
            res = lanczos(op, k=1, max_iters=100, tol=tol, seed=seed, start=start)
            return time.perf_counter() - t0, {"hvps": res.num_products, "lanczos_steps": res.iterations,
                                              "residual": res.residuals[0],
                                              "rel_error": abs(res.lambda_max - ref) / abs(ref)}
        return run

    for start in STARTS:
        for tol in TOLS:
            methods[f"lanczos_{start}_tol_{tol:g}"] = lanczos_run(start, tol)

    def power_run(seed):
        t0 = time.perf_counter()
        op = HessianOperator(model, x, y, chunk_size=len(x))
        res = power_iteration(op, max_iters=300, tol=1e-3, seed=seed)
        return time.perf_counter() - t0, {"hvps": res.num_products, "residual": res.residuals[0],
                                          "rel_error": abs(res.lambda_max - ref) / abs(ref)}

    methods["power_iteration_residual_1e-3"] = power_run
    times: dict = {(name, seed): [] for name in methods for seed in seeds}
    info: dict = {}
    for _ in range(rounds):
        for seed in seeds:
            for name, fn in methods.items():
                sec, info[name, seed] = fn(seed)
                times[name, seed].append(sec)
    if "pyhessian" in methods:
        ph.hessian_vector_product = original
    for name in methods:
        out[name] = [{"seconds": statistics.median(times[name, seed]), **info[name, seed]} for seed in seeds]
    return out


def trace_estimators(model, x, y, products: int = 12, seeds=range(8)) -> dict:
    """Spread over seeds of the tr(H) estimates at equal products (no exact trace at this size)."""
    op = HessianOperator(model, x, y, chunk_size=len(x))
    out = {"products": products}
    for name, fn in (("hutchinson", hutchinson_trace), ("hutch++", hutchpp_trace)):
        vals = [fn(op, products, seed=s).trace for s in seeds]
        out[name] = {"mean": statistics.mean(vals), "std_over_seeds": statistics.stdev(vals), "values": vals}
    return out


# cheaper probe settings than the default, each costed on the same checkpoint (the owner's menu for the
# probe-overhead target; ``probe.every: k`` divides any of these by about k)
VARIANTS = {
    "trace off": {"trace_samples": 0},
    "trace off, 4 sharpness directions": {"trace_samples": 0, "sharpness_directions": 4},
    "trace off, 1,024 probe samples": {"trace_samples": 0, "samples": 1024},
    "trace off, 512 probe samples": {"trace_samples": 0, "samples": 512},
}


def probe_overhead(model_cfg_hidden, train, test, tile: int = 1, variants: dict | None = None) -> dict:
    """One default probe against one default training epoch. ``tile`` > 1 repeats the training split that
    many times — a *timing* workload only (the cost of an epoch and of full-split evaluation on a split of
    that size, e.g. 15 × 4,000 = MNIST's 60,000); no number it produces is a result about data.
    ``variants`` ({name: ProbeConfig overrides}) are timed on the same checkpoint."""
    torch.manual_seed(0)
    model = MLP(784, model_cfg_hidden, "relu", 10)
    xt, yt = (train[0].repeat(tile, 1), train[1].repeat(tile)) if tile > 1 else train
    t_epoch = train_epochs(model, xt, yt, epochs=2)
    optimizer = {"lr": 0.05, "momentum": 0.9, "nesterov": False}

    def run(cfg: ProbeConfig, parts: dict) -> tuple[dict, float]:
        idx = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.samples]
        t0 = time.perf_counter()
        rec, _ = probe(model, (xt, yt), test, (train[0][idx], train[1][idx]), optimizer, cfg, timings=parts)
        return rec, time.perf_counter() - t0

    cheaper = {name: run(ProbeConfig(**over), {})[1] / t_epoch for name, over in (variants or {}).items()}
    parts: dict[str, float] = {}
    rec, t_probe = run(ProbeConfig(), parts)
    # the seed study's keys need everything but the trace (and the density, which is not per epoch)
    seed_keys = sum(v for k, v in parts.items() if k not in ("trace", "density"))
    return {"train_epoch_s": t_epoch, "probe_s": t_probe, "probe_fraction_of_epoch": t_probe / t_epoch,
            "parts_s": parts, "parts_fraction_of_epoch": {k: v / t_epoch for k, v in parts.items()},
            "seed_keys_fraction_of_epoch": seed_keys / t_epoch,
            "cheaper_settings_fraction_of_epoch": cheaper,
            "train_examples": len(xt), "tiled": tile, "probe_hvps": rec["hvp_count"],
            "lanczos_iterations": rec["lanczos_iterations"],
            "note": "per-epoch probe vs one epoch of training on the same split at default params"}


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def scaling_one(width: int) -> dict:
    (x, y), _ = data()
    x, y = x[:2048], y[:2048]
    torch.manual_seed(0)
    model = MLP(784, [width, width], "relu", 10).eval()
    base = _rss_mb()
    op = HessianOperator(model, x, y, chunk_size=2048)
    v = torch.randn(op.n)
    op.matvec(v)
    held = _rss_mb() - base  # the cached activations / errors and buffers
    params = list(model.parameters())
    t = interleaved({"hvp": lambda: op.matvec(v),
                     "grad": lambda: torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), params)},
                    rounds=11)
    t_hvp, t_grad = t["hvp"], t["grad"]
    return {"width": width, "params": op.n, "hvp_s": t_hvp, "gradient_s": t_grad, "ratio": t_hvp / t_grad,
            "rss_held_mb": held, "hvp_us_per_param": 1e6 * t_hvp / op.n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scaling-one", type=int)
    args = ap.parse_args()
    if args.scaling_one:
        print(json.dumps(scaling_one(args.scaling_one)))
        return
    torch.manual_seed(0)
    train, test = data()
    model = MLP(784, [256, 256], "relu", 10)
    train_epochs(model, *train, epochs=3)  # a trained checkpoint
    xp, yp = train[0][:2048], train[1][:2048]
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "setup":
               "784-256-256-10 ReLU MLP after 3 epochs of SGD(0.05, 0.9) on the offline MNIST digits; 2,048 samples"}
    results["hvp_routes"] = hvp_routes(model, xp, yp)
    results["lambda_max"] = against_pyhessian(model, xp, yp)
    results["trace"] = trace_estimators(model, xp, yp)
    results["probe_overhead"] = probe_overhead([256, 256], train, test)
    results["probe_overhead_60k_timing"] = probe_overhead([256, 256], train, test, tile=15, variants=VARIANTS)
    results["scaling"] = [json.loads(subprocess.run([sys.executable, "-m", "benchmarks.curvature", "--scaling-one",
                                                     str(w)], capture_output=True, text=True, check=True).stdout)
                          for w in (256, 512, 1024)]
    report(results)  # adds the time ratios at PyHessian's accuracy to the results
    write_json(OUT, results)


def _mean(runs, key):
    return statistics.mean(r[key] for r in runs)


def report(r: dict) -> None:
    print(f"\n{r['setup']}; torch {r['torch']}, {r['threads']} threads\n")
    print("HVP route                          time/HVP   × gradient")
    for k, v in r["hvp_routes"].items():
        if isinstance(v, dict):
            print(f"  {k:32s} {v['seconds'] * 1e3:7.1f} ms   {v['ratio_to_gradient']:5.2f}×")
    lm = r["lambda_max"]
    print(f"\nλ_max (reference {lm['reference_lambda_max']:.6g}), mean over seeds")
    print("  method                          seconds   HVPs   rel. error")
    rows = [("pyhessian power (tol 1e-3)", lm["pyhessian"])] if isinstance(lm["pyhessian"], list) else []
    rows += [(f"lanczos {st}, tol {t:g}", lm[f"lanczos_{st}_tol_{t:g}"]) for st in STARTS for t in TOLS]
    rows += [("power iteration, residual 1e-3", lm["power_iteration_residual_1e-3"])]
    for name, runs in rows:
        print(f"  {name:36s} {_mean(runs, 'seconds'):7.3f}  {_mean(runs, 'hvps'):5.1f}   "
              f"{max(x['rel_error'] for x in runs):.1e}")
    if isinstance(lm["pyhessian"], list):
        target = max(x["rel_error"] for x in lm["pyhessian"])
        for st in STARTS:
            ok = [(t, lm[f"lanczos_{st}_tol_{t:g}"]) for t in TOLS
                  if max(x["rel_error"] for x in lm[f"lanczos_{st}_tol_{t:g}"]) <= target]
            if ok:
                t, runs = min(ok, key=lambda tr: _mean(tr[1], "seconds"))
                ratio = _mean(runs, "seconds") / _mean(lm["pyhessian"], "seconds")
                print(f"  at PyHessian's accuracy ({target:.1e}): lanczos ({st}, tol {t:g}) "
                      f"takes {ratio:.2f}× its time")
                lm[f"time_ratio_at_pyhessian_accuracy_{st}"] = ratio
    else:
        print(f"  pyhessian: {lm['pyhessian']}")
    res4 = [(st, lm[f"lanczos_{st}_tol_0.0001"]) for st in STARTS]
    for st, runs in res4:
        print(f"  residual ≤ 1e-4 ({st} start): {_mean(runs, 'hvps'):.1f} products; power iteration to 1e-3: "
              f"{_mean(lm['power_iteration_residual_1e-3'], 'hvps'):.1f}")
    tr = r["trace"]
    print(f"\ntr(H) with {tr['products']} products, over {len(tr['hutchinson']['values'])} seeds: "
          + "; ".join(f"{k} {tr[k]['mean']:.1f} ± {tr[k]['std_over_seeds']:.1f} (std)"
                      for k in ("hutchinson", "hutch++")))
    for key in ("probe_overhead", "probe_overhead_60k_timing"):
        po = r[key]
        what = "offline digits" if po["tiled"] == 1 else f"the digits tiled {po['tiled']}×, a timing workload"
        print(f"\nprobe overhead ({what}): probe {po['probe_s']:.2f} s ({po['probe_hvps']} HVPs) / train epoch "
              f"{po['train_epoch_s']:.2f} s ({po['train_examples']} examples) = {po['probe_fraction_of_epoch']:.0%}")
        print("  " + "; ".join(f"{k} {v:.0%}" for k, v in po["parts_fraction_of_epoch"].items() if k != "density"))
        print(f"  the seed study's keys alone (no trace): {po['seed_keys_fraction_of_epoch']:.0%} of an epoch")
        for name, frac in po.get("cheaper_settings_fraction_of_epoch", {}).items():
            print(f"  {name}: {frac:.0%}")
    print("\nscaling (2 hidden layers, 2,048 samples)")
    print("  width   params     HVP ms   grad ms   ratio   µs/param   RSS held by operator, MB")
    for s in r["scaling"]:
        print(f"  {s['width']:5d} {s['params']:8d}  {s['hvp_s'] * 1e3:8.1f}  {s['gradient_s'] * 1e3:8.1f}  "
              f"{s['ratio']:5.2f}  {s['hvp_us_per_param']:8.4f}   {s['rss_held_mb']:8.1f}")


if __name__ == "__main__":
    main()
