"""One probe record: the per-part timings a caller can ask for never enter the record."""

from __future__ import annotations

import math

import torch

from landscape.config import ProbeConfig
from landscape.eigenvalues import lanczos
from landscape.geometry import probe
from landscape.hvp import HessianOperator
from landscape.models import MLP

PARTS = {"full-split evaluation", "loss, gradient and HVP cache", "lanczos", "lgdi", "trace", "density",
         "directional sharpness"}


def _setup():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = MLP(12, [8], "tanh", 3)
    x, y = torch.randn(90, 12, generator=g), torch.randint(0, 3, (90,), generator=g)
    return model, (x[:60], y[:60]), (x[60:], y[60:])


def test_probe_timings_cover_every_part_and_leave_the_record_unchanged():
    model, train, test = _setup()
    cfg = ProbeConfig(samples=40, chunk_size=16, trace_samples=4, sharpness_directions=3)
    opt = {"lr": 0.1, "momentum": 0.9, "nesterov": False}
    plain, _ = probe(model, train, test, (train[0][:40], train[1][:40]), opt, cfg)
    parts: dict[str, float] = {}
    timed, _ = probe(model, train, test, (train[0][:40], train[1][:40]), opt, cfg, timings=parts)
    assert timed == plain  # bit-identical: no timing leaks into the record
    assert set(parts) == PARTS and all(v >= 0 and math.isfinite(v) for v in parts.values())
    # and the record is what the parts compute: λ_max of the probe-set Hessian, η·λ_max
    op = HessianOperator(model, train[0][:40], train[1][:40], chunk_size=16)
    lam = lanczos(op, tol=cfg.tol, max_iters=cfg.lanczos_iters, seed=cfg.seed).lambda_max
    assert plain["lambda_max"] == lam and plain["stability_ratio"] == 0.1 * lam
