"""The line between two parameter vectors and the barrier heights along paths."""

import math

import numpy as np
import pytest
import torch

from landscape.evaluation import evaluate
from landscape.models import MLP
from landscape.parameters import assign, flatten
from landscape.paths.barrier import barrier, path_barriers
from landscape.paths.directions import gaussian_like, normalize, plane_directions
from landscape.paths.line import alpha_grid, line_losses
from landscape.paths.surface import loss_surface


def test_barrier_is_the_largest_rise_above_the_chord_not_the_rise_at_the_maximum():
    # L(α) = 1 − 0.9α + 0.2 sin(πα): the maximum of L is at α = 0 (an endpoint), so "chord at argmax L"
    # gives 0, but the path rises 0.2 above the chord at α = 0.5
    a = np.linspace(0, 1, 101)
    res = barrier(a.tolist(), (1 - 0.9 * a + 0.2 * np.sin(np.pi * a)).tolist())
    assert res["barrier"] == pytest.approx(0.2, abs=1e-12)
    assert res["alpha_star"] == pytest.approx(0.5, abs=1e-12)
    assert (res["start"], res["end"]) == pytest.approx((1.0, 0.1), abs=1e-12)
    # Frankle's instability: max along the path minus the mean of the endpoints
    assert res["frankle"] == pytest.approx(1.0 - 0.55, abs=1e-12)


def test_planted_bump_of_known_height_and_position():
    a = np.linspace(0, 1, 401)
    chord = 2.0 + 1.5 * a
    bump = 0.35 * np.exp(-((a - 0.7) ** 2) / (2 * 0.03**2))
    res = barrier(a.tolist(), (chord + bump).tolist())
    assert res["barrier"] == pytest.approx(0.35, rel=1e-9)
    assert res["alpha_star"] == pytest.approx(0.7, abs=1e-12)


def test_convex_path_has_zero_barrier_and_extension_is_ignored():
    a = alpha_grid(11, -0.5, 1.5)
    assert 0.0 in a and 1.0 in a and a[0] == -0.5 and a[-1] == 1.5
    loss = [10.0 if x < 0 or x > 1 else (x - 0.4) ** 2 for x in a]  # huge values outside [0, 1] do not count
    res = barrier(a, loss)
    assert res["barrier"] == 0.0 and res["alpha_star"] in (0.0, 1.0)
    assert res["frankle"] == pytest.approx(0.36 - 0.5 * (0.16 + 0.36))  # max is the endpoint α = 0


def test_error_barriers_use_errors_not_losses():
    # loss is flat along the path but the accuracy dips in the middle: only the error barrier sees it
    a = [0.0, 0.25, 0.5, 0.75, 1.0]
    rows = [{"alpha": x, "loss": 1.0, "test_loss": 1.0, "train_accuracy": 0.9 - (0.3 if x == 0.5 else 0.0),
             "test_accuracy": 0.8} for x in a]
    res = path_barriers(rows)
    assert res["barrier_height"] == 0.0 and res["test_loss_barrier"] == 0.0
    assert res["train_error_barrier"] == pytest.approx(0.3)
    assert res["train_error_instability_frankle"] == pytest.approx(0.4 - 0.1)
    assert res["test_error_barrier"] == pytest.approx(0.0)


def test_line_losses_follow_the_interpolated_model():
    torch.manual_seed(0)
    model = MLP(10, [8], "tanh", 3).double()
    other = MLP(10, [8], "tanh", 3).double()
    x, y = torch.randn(30, 10, dtype=torch.float64), torch.randint(0, 3, (30,))
    ta, tb = flatten(model), flatten(other)
    rows = line_losses(model, ta, tb, [0.0, 0.25, 1.0], (x, y), (x[:10], y[:10]))
    probe = MLP(10, [8], "tanh", 3).double()
    for row in rows:
        assign(probe, (1 - row["alpha"]) * ta + row["alpha"] * tb)
        assert row["loss"] == pytest.approx(evaluate(probe, x, y)[0], rel=1e-12)
        assert row["test_loss"] == pytest.approx(evaluate(probe, x[:10], y[:10])[0], rel=1e-12)
    assert torch.equal(flatten(model), ta)  # the model itself is untouched
    assert math.isfinite(path_barriers(rows)["barrier_height"])


# ------------------------------------------------------------------------------------------- surfaces


def test_surface_of_a_quadratic_loss_equals_the_analytic_value_at_every_grid_point():
    """A linear model under the squared error: L(θ + v) = L + gᵀv + ½ vᵀHv exactly; every grid point must
    match it, and the center is the loss at θ."""
    from tests.helpers import dense_hessian

    torch.manual_seed(0)
    model = MLP(6, [], "relu", 3).double()
    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    theta = flatten(model)
    H = dense_hessian(model, x, y, "mse")
    t = theta.clone().requires_grad_(True)
    from landscape.evaluation import per_example_loss
    from landscape.parameters import unflatten

    L0 = per_example_loss(torch.func.functional_call(model, unflatten(t, model), (x,)), y, "mse").mean()
    (g,) = torch.autograd.grad(L0, t)
    L0 = L0.detach()
    rec = loss_surface(model, (x, y), points=5, extent=0.7, normalization="layer", seed=3, loss="mse")
    delta, eta = plane_directions(model, "layer", 3)
    for i, yv in enumerate(rec["y"]):
        for j, xv in enumerate(rec["x"]):
            v = xv * delta + yv * eta
            assert rec["loss"][i][j] == pytest.approx(float(L0 + g @ v + 0.5 * v @ H @ v), rel=1e-10)
    assert rec["x"][2] == rec["y"][2] == 0.0 and rec["loss"][2][2] == pytest.approx(float(L0), rel=1e-12)


def test_filter_normalization_matches_each_output_units_norm_and_zeroes_biases():
    torch.manual_seed(1)
    from landscape.models import CNN

    for model in (MLP(20, [16, 8], "relu", 3), CNN([3, 4], [8], "relu", 10)):
        params = [p.detach() for p in model.parameters()]
        d = normalize(gaussian_like(model, torch.Generator().manual_seed(0)), params, "filter")
        for di, p in zip(d, params, strict=True):
            if p.dim() < 2:
                assert torch.count_nonzero(di) == 0  # biases: zeroed (Li et al.), not rescaled per filter
            else:
                torch.testing.assert_close(di.flatten(1).norm(dim=1), p.flatten(1).norm(dim=1), rtol=1e-5, atol=0)
        layer = normalize(gaussian_like(model, torch.Generator().manual_seed(0)), params, "layer")
        for di, p in zip(layer, params, strict=True):
            assert float(di.norm()) == pytest.approx(float(p.norm()), rel=1e-5)
        unit = normalize(gaussian_like(model, torch.Generator().manual_seed(0)), params, "none")
        assert float(torch.sqrt(sum(u.double().pow(2).sum() for u in unit))) == pytest.approx(1.0, rel=1e-6)


def test_directions_are_gaussian_not_uniform():
    # regression for the uniform draws of the loss-landscapes package: excess kurtosis 0 (Gaussian), not −1.2
    model = MLP(784, [256], "relu", 10)
    raw = torch.cat([d.reshape(-1) for d in gaussian_like(model, torch.Generator().manual_seed(0))]).double()
    z = (raw - raw.mean()) / raw.std()
    assert float((z**4).mean()) - 3 == pytest.approx(0.0, abs=0.05)


def test_orthogonalized_directions_are_orthogonal_and_keep_their_norm():
    model = MLP(20, [16], "tanh", 3)
    d0, e0 = plane_directions(model, "filter", 5)
    d, e = plane_directions(model, "filter", 5, orthogonalize=True)
    assert torch.equal(d, d0)
    assert abs(float(d.double() @ e.double())) < 1e-6 * float(d.norm() * e.norm())
    assert float(e.norm()) == pytest.approx(float(e0.norm()), rel=1e-6)


# --------------------------------------------------------------------------------------- connectivity
def _tiny_run(tmp_path):
    from landscape.config import ModelConfig, TrainConfig
    from landscape.data import prepare
    from landscape.sources import offline_mnist
    from landscape.training import train

    data = tmp_path / "data"
    prepare(offline_mnist(0), data, 300, 100, 0)
    cfg = TrainConfig(epochs=3, batch_size=50, lr=0.1, seed=0)
    train(ModelConfig(hidden=[16]), cfg, data, tmp_path / "ckpt")
    return data, cfg


@pytest.mark.parametrize("batch_size", ["full", 300, 1000])
def test_without_sgd_noise_no_barrier_is_reported(tmp_path, batch_size):
    """Full-batch training (or a batch covering the whole set): the copy's mini-batch order changes nothing, the
    copies would be one network and a barrier of ~1e-8 would read as perfect connectivity. None is reported."""
    from landscape.config import ModelConfig, TrainConfig
    from landscape.data import prepare
    from landscape.paths.connectivity import connectivity, summary_metrics
    from landscape.sources import offline_mnist
    from landscape.training import train

    data = tmp_path / "data"
    prepare(offline_mnist(0), data, 300, 100, 0)
    cfg = TrainConfig(epochs=2, batch_size=batch_size, lr=0.1, seed=0)
    train(ModelConfig(hidden=[8]), cfg, data, tmp_path / "ckpt")
    rec = connectivity(tmp_path / "ckpt", data, 0, 7, 5, cfg)
    assert "no SGD noise" in rec["skipped"] and "copy" not in rec
    assert rec["loss_barrier"] is None and rec["error_barrier"] is None and rec["distance"] is None
    summary = summary_metrics(rec)
    assert summary["loss_barrier"] is None and "no SGD noise" in summary["skipped"]


def test_a_copy_with_the_same_data_order_is_the_same_network_and_another_order_is_not(tmp_path):
    from landscape.paths.connectivity import connectivity

    data, cfg = _tiny_run(tmp_path)
    # spawned at the initialization with the main run's own seed (what the config forbids) the copy must
    # retrace the main run exactly; from epoch 1 with another seed it must not
    same = connectivity(tmp_path / "ckpt", data, 0, cfg.seed, 5, cfg)
    other = connectivity(tmp_path / "ckpt", data, 1, 7, 5, cfg)
    assert same["distance"] == 0.0 and same["loss_barrier"] == 0.0  # the copy retraced the main run exactly
    assert other["distance"] > 0 and other["alpha"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert other["loss"][0] != other["loss"][-1]  # two different endpoints
    assert other["batch_norm"].startswith("the model has no batch norm")
    assert set(other) >= {"spawn_epoch", "alpha", "loss", "test_loss", "test_error", "loss_barrier", "error_barrier"}


def test_bezier_curve_has_the_fixed_endpoints(tmp_path):  # and see test_a_trained_bezier_curve_goes_round…
    from landscape.paths.connectivity import connectivity
    from landscape.paths.curves import bezier

    data, cfg = _tiny_run(tmp_path)
    rec = connectivity(tmp_path / "ckpt", data, 0, 3, 5, cfg, curve="bezier", curve_epochs=2)
    c = rec["curve"]
    assert c["loss"][0] == pytest.approx(rec["loss"][0], rel=1e-6)
    assert c["loss"][-1] == pytest.approx(rec["loss"][-1], rel=1e-6)
    assert len(c["train_loss_history"]) == 2 and all(math.isfinite(v) for v in c["train_loss_history"])
    a, b, m = torch.zeros(3), torch.ones(3), torch.full((3,), 5.0)
    assert torch.equal(bezier(a, m, b, 0.5), torch.full((3,), 0.25 * 0 + 0.5 * 5 + 0.25 * 1))


class _Ring(torch.nn.Module):
    """Two outputs (‖θ‖², 0) whatever the input: under the squared error against class 0 the loss is
    ½(‖θ‖² − 1)², zero on the unit circle. Between (1, 0.1) and (−1, 0.1) the straight line crosses the middle
    of the ring (a real barrier, ≈ 0.49 at t = ½); a Bézier curve can go round it."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = (self.theta**2).sum() * torch.ones(len(x), dtype=torch.float64)
        return torch.stack([r, torch.zeros_like(r)], 1)


def _ring_loss(theta: torch.Tensor) -> float:
    return 0.5 * (float(theta @ theta) - 1.0) ** 2


def test_a_trained_bezier_curve_goes_round_a_real_barrier():
    from landscape.config import TrainConfig
    from landscape.paths.curves import bezier, train_control_point

    a, b = torch.tensor([1.0, 0.1], dtype=torch.float64), torch.tensor([-1.0, 0.1], dtype=torch.float64)
    x, y = torch.zeros(64, 1, dtype=torch.float64), torch.zeros(64, dtype=torch.long)
    line_mid = _ring_loss((a + b) / 2)
    assert line_mid > 0.45  # the barrier on the line
    untrained = bezier(a, (a + b) / 2, b, 0.5)  # the starting point of training is the line itself
    assert _ring_loss(untrained) == pytest.approx(line_mid)
    cfg = TrainConfig(lr=0.05, momentum=0.9)
    theta_c, hist = train_control_point(_Ring(), a, b, x, y, 30, cfg, batch_size=8, seed=0, loss="mse")
    curve_mid = _ring_loss(bezier(a, theta_c, b, 0.5))
    assert curve_mid < 0.1 * line_mid and hist[-1] < 0.1 * hist[0]
    assert all(_ring_loss(bezier(a, theta_c, b, t)) < line_mid for t in (0.25, 0.5, 0.75))


def test_the_control_point_is_trained_with_the_runs_optimizer():
    """An Adam run's curve is trained with Adam (its β's, ε and learning rate), not with SGD at train.lr."""
    from landscape.config import TrainConfig
    from landscape.evaluation import batch_loss
    from landscape.paths.curves import bezier, train_control_point

    a, b = torch.tensor([1.0, 0.1], dtype=torch.float64), torch.tensor([-1.0, 0.1], dtype=torch.float64)
    x, y = torch.zeros(6, 1, dtype=torch.float64), torch.zeros(6, dtype=torch.long)
    adam = TrainConfig(optimizer="adam", lr=0.01, momentum=0.8, adam_beta2=0.99, adam_eps=1e-6)
    got, _ = train_control_point(_Ring(), a, b, x, y, 2, adam, batch_size=4, seed=3, loss="mse")
    # the same steps by hand: the generator gives the batch order, then one t per batch
    g = torch.Generator().manual_seed(3)
    c = ((a + b) / 2).clone().requires_grad_(True)
    opt = torch.optim.Adam([c], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    for _ in range(2):
        order = torch.randperm(6, generator=g)
        for i in range(0, 6, 4):
            t = float(torch.rand((), generator=g))
            out = torch.func.functional_call(_Ring(), {"theta": bezier(a, c, b, t)}, (x[order[i : i + 4]],))
            opt.zero_grad()
            batch_loss(out, y[order[i : i + 4]], "mse").backward()
            opt.step()
    torch.testing.assert_close(got, c.detach(), rtol=1e-12, atol=1e-14)
    sgd, _ = train_control_point(_Ring(), a, b, x, y, 2, TrainConfig(lr=0.01, momentum=0.8), batch_size=4, seed=3,
                                 loss="mse")
    assert not torch.allclose(sgd, got)


def test_with_batch_norm_probe_line_and_surface_measure_the_same_network(tmp_path):
    """"The network at θ" has one definition: batch-norm statistics recomputed on the training split. The probe
    used the checkpoint's stored running averages before (a BN MLP: probe 0.676 against 0.875 on the line at one
    checkpoint); now the surface centre and both line endpoints equal the probe's train loss, and the stored-
    statistics loss, which differs, is kept beside it."""
    from landscape.config import ModelConfig, ProbeConfig, TrainConfig
    from landscape.data import prepare
    from landscape.geometry import probe_checkpoints
    from landscape.paths.line import line_between_checkpoints
    from landscape.paths.surface import surface_of_checkpoint
    from landscape.sources import offline_mnist
    from landscape.stage_inputs import SurfaceInputs
    from landscape.training import train

    data, ckpts = tmp_path / "data", tmp_path / "ckpt"
    prepare(offline_mnist(0), data, train_samples=300, test_samples=100, seed=0)
    train(ModelConfig(hidden=[24, 24], batch_norm=True), TrainConfig(epochs=2, batch_size=32, lr=0.1, seed=0),
          data, ckpts)
    cfg = ProbeConfig(samples=64, lanczos_iters=8, trace_samples=0, sharpness_directions=2, ascent_steps=1,
                      density_epochs="none", eval_batch_size=128)
    records, _, _ = probe_checkpoints([1, 2], str(data), str(ckpts), cfg)
    by_epoch = {r["epoch"]: r for r in records}
    rows, _ = line_between_checkpoints(str(ckpts), str(data), 1, 2, 3, 0.0, 1.0, 128)
    surface = surface_of_checkpoint(str(ckpts), str(data), SurfaceInputs(True, 2, 0, "filter", False, 3, 0.5,
                                                                          "train", None, None, 128, 1, "cpu"))
    assert rows[0]["loss"] == pytest.approx(by_epoch[1]["train_loss"], rel=1e-5)
    assert rows[-1]["loss"] == pytest.approx(by_epoch[2]["train_loss"], rel=1e-5)
    assert surface["loss"][1][1] == pytest.approx(by_epoch[2]["train_loss"], rel=1e-5)
    for r in records:
        assert r["batch_norm_statistics"].startswith("recomputed")
        assert abs(r["train_loss_stored_statistics"] - r["train_loss"]) > 1e-3 * r["train_loss"]


def test_pca_directions_recover_the_plane_of_a_planar_trajectory():
    """A trajectory that lies in a known plane through the last point: the PCA plane is that plane (the
    projector onto it equals the known one), the two directions carry 100% of the variance, and the projected
    coordinates reproduce the trajectory exactly."""
    from landscape.paths.directions import pca_directions

    g = torch.Generator().manual_seed(0)
    n = 300
    basis, _ = torch.linalg.qr(torch.randn(n, 2, generator=g, dtype=torch.float64))
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    coords = torch.stack([3 * (1 - t) ** 2, torch.sin(4 * t) * (1 - t)], 1)  # ends at (0, 0): the last point
    center = torch.randn(n, generator=g, dtype=torch.float64)
    trajectory = center + coords @ basis.t()
    d, e, rec = pca_directions(trajectory, list(range(9)), center)
    found = torch.stack([d, e], 1)
    torch.testing.assert_close(found @ found.t(), basis @ basis.t(), atol=1e-10, rtol=0)
    assert abs(float(d @ e)) < 1e-12 and float(d.norm()) == pytest.approx(1.0, abs=1e-12)
    assert sum(rec["explained_variance"]) == pytest.approx(1.0, abs=1e-12)
    back = torch.tensor([[p["x"], p["y"]] for p in rec["trajectory"]], dtype=torch.float64) @ found.t()
    torch.testing.assert_close(center + back, trajectory, atol=1e-10, rtol=0)
    assert rec["trajectory"][-1]["x"] == pytest.approx(0.0, abs=1e-12)
    assert rec["trajectory"][0]["x"] <= 0 and rec["trajectory"][0]["y"] <= 0  # the sign convention
    # off the plane, the share of variance drops below 1
    noisy = trajectory + 0.3 * torch.randn(9, n, generator=g, dtype=torch.float64)
    assert sum(pca_directions(noisy, list(range(9)), center)[2]["explained_variance"]) < 0.99


def test_hessian_directions_are_the_top_eigenvectors_of_a_known_quadratic():
    from landscape.paths.directions import hessian_directions
    from tests.helpers import make_quadratic

    model, c, s, loss_fn, H = make_quadratic([0.5, 1.0, 2.0, 3.0, 7.0, 10.0], n_samples=30, seed=4)
    d, e, rec = hessian_directions(model, c, s, loss_fn, iters=20, tol=1e-8, seed=0, chunk_size=30, start="random")
    evals, evecs = torch.linalg.eigh(H)
    assert rec["eigenvalues"] == pytest.approx([float(evals[-1]), float(evals[-2])], rel=1e-9)
    assert abs(float(d @ evecs[:, -1])) == pytest.approx(1.0, abs=1e-8)
    assert abs(float(e @ evecs[:, -2])) == pytest.approx(1.0, abs=1e-8)
    assert all(rec["converged"]) and rec["note"] is None
    # too few Lanczos steps: said and recorded, not raised
    _, _, short = hessian_directions(model, c, s, loss_fn, iters=2, tol=1e-12, seed=0, chunk_size=30, start="random")
    assert not all(short["converged"]) and "did not converge within probe.lanczos_iters = 2" in short["note"]


def test_surface_metrics_keep_the_convexity_summary_beside_the_plane_and_count_what_converged(tmp_path):
    """A PCA (or Hessian) plane's metrics used to replace the curvature map's: the nonconvex fraction vanished
    from MLflow whenever the plane was not random. Both are logged, with the share of map points that converged."""
    from landscape.io import write_json
    from landscape.run_metrics import surface_summary

    curvature = {"nonconvex_fraction": 0.25, "converged": [[True, False], [True, True]]}
    for plane, keys in (({"kind": "pca", "explained_variance": [0.6, 0.2]}, {"surface/explained_variance_2"}),
                        ({"kind": "hessian", "eigenvalues": [3.0, 2.0], "residuals": [1e-5, 2e-5]},
                         {"surface/lambda_2", "surface/lambda_1_residual"}),
                        ({"kind": "random"}, set())):
        write_json(tmp_path / "surface.json", {"plane": plane, "curvature": curvature})
        out = surface_summary({"surface": tmp_path / "surface.json"})
        assert keys <= out.keys() and out["surface/nonconvex_fraction"] == 0.25
        assert out["surface/curvature_converged_fraction"] == 0.75
