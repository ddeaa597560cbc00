"""One measurement for benchmarks/probe_speed.py, run in its own process against *some* checkout of the
``landscape`` package (PYTHONPATH decides which: today's or the baseline commit's).

    python benchmarks/probe_child.py WORK.pt        prints JSON: one training epoch and one default probe, seconds

It only uses interfaces that both versions share (``landscape.models.MLP``, ``landscape.config.ProbeConfig``,
``landscape.geometry.probe``), and its own training loop, identical for both.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)  # the pipeline's default (train.threads)

from landscape.config import ProbeConfig
from landscape.geometry import probe
from landscape.models import MLP


def main() -> None:
    work = torch.load(sys.argv[1], weights_only=True)
    xt, yt, xs, ys, idx = work["x_train"], work["y_train"], work["x_test"], work["y_test"], work["probe_idx"]
    model = MLP(784, [256, 256], "relu", 10)
    model.load_state_dict(work["state"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt.load_state_dict(work["opt"])
    optimizer = {"lr": 0.05, "momentum": 0.9, "nesterov": False}
    cfg = ProbeConfig()
    probe(model, (xt, yt), (xs, ys), (xt[idx], yt[idx]), optimizer, cfg)  # warm-up: allocator, caches
    parts: dict[str, float] = {}
    t0 = time.perf_counter()
    rec, _ = probe(model, (xt, yt), (xs, ys), (xt[idx], yt[idx]), optimizer, cfg, timings=parts)
    t_probe = time.perf_counter() - t0
    g = torch.Generator().manual_seed(1)
    model.train()
    t0 = time.perf_counter()
    perm = torch.randperm(len(xt), generator=g)
    for i in range(0, len(xt), 128):
        b = perm[i : i + 128]
        loss = F.cross_entropy(model(xt[b]), yt[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    t_epoch = time.perf_counter() - t0
    print(json.dumps({"probe_s": t_probe, "epoch_s": t_epoch, "parts_s": parts, "hvp_count": rec["hvp_count"],
                      "lambda_max": rec["lambda_max"], "lambda_max_residual": rec["lambda_max_residual"],
                      "directional_sharpness": rec["directional_sharpness"],
                      "directional_sharpness_stderr": rec["directional_sharpness_stderr"],
                      "hessian_trace": rec["hessian_trace"], "hessian_trace_stderr": rec["hessian_trace_stderr"],
                      "train_loss": rec["train_loss"]}))


if __name__ == "__main__":
    main()
