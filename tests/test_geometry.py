"""One probe record against exact answers, and the per-part timings that never enter it."""

from __future__ import annotations

import math

import pytest
import torch

from landscape.config import ProbeConfig
from landscape.geometry import probe
from tests.helpers import dense_hessian, tiny_network

PARTS = {"full-split evaluation", "loss, gradient and HVP cache", "lanczos", "lgdi", "trace", "density",
         "directional sharpness", "worst-case and adaptive sharpness"}
LR = 0.1


def test_probe_record_matches_the_dense_hessian_and_timings_stay_out_of_it():
    model, x, y = tiny_network("tanh", n_samples=90, seed=3)
    train, test = (x[:60], y[:60]), (x[60:], y[60:])
    P = (x[:40], y[:40])  # the probe set: H, g and every curvature number must be over exactly these
    cfg = ProbeConfig(samples=40, chunk_size=16, trace_samples=30, sharpness_directions=3)
    opt = {"lr": LR, "momentum": 0.9, "nesterov": False}
    plain, _ = probe(model, train, test, P, opt, cfg)
    parts: dict[str, float] = {}
    timed, _ = probe(model, train, test, P, opt, cfg, timings=parts)
    assert timed == plain  # bit-identical: no timing leaks into the record
    assert set(parts) == PARTS and all(v >= 0 and math.isfinite(v) for v in parts.values())

    H = dense_hessian(model, *P)
    params = list(model.parameters())
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(
        torch.nn.functional.cross_entropy(model(P[0]), P[1]), params)])
    lam = float(torch.linalg.eigvalsh(H)[-1])
    assert plain["lambda_max"] == pytest.approx(lam, rel=1e-6)
    assert plain["stability_ratio"] == pytest.approx(LR * lam, rel=1e-6)
    assert plain["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-10)
    assert plain["lgdi"] == pytest.approx(0.5 * LR * float(g @ H @ g) / float(g @ g), rel=1e-8)
    # the heavy-ball steady-state step η/(1−β) (β = 0.9: ten times the plain step)
    assert plain["lgdi_effective"] == pytest.approx(0.5 * LR / (1 - 0.9) * float(g @ H @ g) / float(g @ g), rel=1e-8)
    assert abs(plain["hessian_trace"] - float(torch.trace(H))) <= 3 * plain["hessian_trace_stderr"]
