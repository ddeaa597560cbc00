"""Generalization measures against exact answers: norms against numpy.linalg, a path norm by hand, distance to
the initialization, batch norm folded into the same function, PAC-Bayes σ against the closed form of a linear
classifier under Gaussian noise, WeightWatcher's α on a planted power-law spectrum, #steps from a history."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm as gaussian
from torch import nn

from landscape.measures.norms import fold_batch_norm, folded_weights, norm_measures, path_norm
from landscape.models import CNN, MLP


def test_spectral_and_frobenius_norms_match_numpy_on_random_layers():
    torch.manual_seed(0)
    model = CNN([3, 5], [20, 12], "relu", 10)
    init = CNN([3, 5], [20, 12], "relu", 10)
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    rec = norm_measures(model, init, x, y)
    mats = [m.weight.detach().double().numpy().reshape(m.weight.shape[0], -1)
            for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    mats0 = [m.weight.detach().double().numpy().reshape(m.weight.shape[0], -1)
             for m in init.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    spec = [np.linalg.norm(m, 2) for m in mats]
    fro = [np.linalg.norm(m, "fro") for m in mats]
    assert [layer["spectral_norm"] for layer in rec["layers"]] == pytest.approx(spec, rel=1e-10)
    assert [layer["frobenius_norm"] for layer in rec["layers"]] == pytest.approx(fro, rel=1e-10)
    v = rec["values"]
    assert v["log_prod_spec"] == pytest.approx(sum(2 * math.log(s) for s in spec), rel=1e-10)
    assert v["log_sum_spec"] == pytest.approx(math.log(5) + sum(2 * math.log(s) for s in spec) / 5, rel=1e-10)
    pairs = list(zip(mats, mats0, strict=True))
    assert v["fro_dist"] == pytest.approx(sum(np.linalg.norm(a - b, "fro") ** 2 for a, b in pairs), rel=1e-10)
    assert v["dist_spec_init"] == pytest.approx(sum(np.linalg.norm(a - b, 2) ** 2 for a, b in pairs), rel=1e-10)
    assert v["params"] == sum(m.size for m in mats)  # weights only: no biases


def test_margin_is_the_tenth_percentile_of_correct_minus_best_other_logit():
    torch.manual_seed(1)
    model = MLP(6, [8], "tanh", 4).double()
    x, y = torch.randn(200, 6, dtype=torch.float64), torch.randint(0, 4, (200,))
    with torch.no_grad():
        z = model(x)
    other = z.clone()
    other[torch.arange(200), y] = -math.inf
    by_hand = np.sort((z[torch.arange(200), y] - other.max(1).values).numpy())[200 // 10 - 1]
    rec = norm_measures(model, model, x, y, percentile=10)
    v = rec["values"]
    assert v["margin"] == pytest.approx(abs(by_hand), rel=1e-12)
    assert v["inverse_margin"] == pytest.approx(1 / by_hand**2, rel=1e-12)
    # random labels: the 10th-percentile example is misclassified, its margin negative. γ is its absolute value
    # (the reference code's convention); the signed value and the flag keep what γ alone hides
    assert by_hand < 0 and v["margin_signed"] == pytest.approx(by_hand, rel=1e-12) and rec["margin_negative"]
    fitted = z.argmax(1)  # labels the network gets right: every margin ≥ 0
    rec = norm_measures(model, model, x, fitted, percentile=10)
    assert rec["values"]["margin_signed"] > 0 and not rec["margin_negative"]


@pytest.mark.parametrize("wrong", [0, 19, 20, 21, 120])
def test_a_negative_margin_is_read_off_the_train_error_for_runs_logged_without_it(wrong):
    """For runs logged before ``measures/margin_signed``: the p-th percentile margin is ≤ 0 exactly when the train
    error is ≥ p/100 (200 examples, k = 20: 19 wrong ones leave it positive, 20 make it negative)."""
    from landscape.study.registry import margin_negative

    torch.manual_seed(2)
    model = MLP(6, [8], "tanh", 4).double()
    x = torch.randn(200, 6, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:wrong] = (y[:wrong] + 1) % 4  # exactly `wrong` misclassified examples
    signed = norm_measures(model, model, x, y, percentile=10)["values"]["margin_signed"]
    logged = {"measures/margin": abs(signed), "accuracy/train": 1 - wrong / 200}
    assert margin_negative(logged, {"measures.margin_percentile": "10.0"}) == (signed < 0) == (wrong >= 20)
    assert margin_negative(logged | {"measures/margin_signed": signed}, {}) == (signed < 0)
    assert margin_negative({"accuracy/train": 0.5}, {}) is None  # no margin measures logged: not known


def test_path_norm_of_a_tiny_relu_net_by_hand():
    # 2 -> 2 -> 1 ReLU net: with every parameter squared, at x = (1, 1):
    # h = relu(W1² 1 + b1²), out = W2² h + b2²
    model = MLP(2, [2], "relu", 1).double()
    with torch.no_grad():
        f64 = torch.float64
        model.net[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=f64))
        model.net[0].bias.copy_(torch.tensor([-1.0, 0.2], dtype=f64))
        model.net[2].weight.copy_(torch.tensor([[2.0, -1.0]], dtype=f64))
        model.net[2].bias.copy_(torch.tensor([0.3], dtype=f64))
    h = [1 + 4 + 1, 0.25 + 9 + 0.04]
    assert path_norm(model, 2) == pytest.approx(4 * h[0] + 1 * h[1] + 0.09, rel=1e-12)


def test_distance_to_the_initialization_is_zero_at_epoch_zero():
    torch.manual_seed(2)
    model = MLP(784, [16], "relu", 10)
    x, y = torch.randn(50, 784), torch.randint(0, 10, (50,))
    v = norm_measures(model, model, x, y)["values"]
    assert v["fro_dist"] == 0.0 and v["l2_dist"] == 0.0 and v["dist_spec_init"] == 0.0
    assert v["param_norm"] > 0


def test_batch_norm_is_folded_into_the_same_function():
    torch.manual_seed(3)
    model = MLP(10, [12, 8], "relu", 3, batch_norm=True).double()
    with torch.no_grad():
        for bn in (model.net[1], model.net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    model.eval()
    x = torch.randn(30, 10, dtype=torch.float64)
    folded = fold_batch_norm(model)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)
    s = model.net[1].weight / torch.sqrt(model.net[1].running_var + model.net[1].eps)
    torch.testing.assert_close(folded_weights(model)[0][1], model.net[0].weight.detach() * s[:, None])


def _separable(n: int = 4000, r: float = 1.5, c: float = 1.0, seed: int = 0):
    """Points of norm r with x₁ = ±c, labelled by the sign of x₁; the linear classifier z₁ − z₀ = a·x₁."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 4, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True) * math.sqrt(r * r - c * c)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    x = torch.cat([c * sign[:, None], v], 1)
    return x, (sign > 0).long()


def test_pacbayes_sigma_matches_the_closed_form_of_a_linear_classifier():
    """A linear classifier (logits Wx + b) under N(0, σ²) noise on all 12 parameters: the logit difference moves
    by N(0, 2σ²(r² + 1)), so with every margin equal to a·c the expected accuracy is Φ(ac / (σ√(2(r² + 1)))).
    The bisection's σ lands where that accuracy is 0.9 ± the tolerance; more Monte-Carlo samples per step
    narrow the spread of σ over seeds."""
    from landscape.measures.pacbayes import pacbayes_measures

    r, c, a = 1.5, 1.0, 1.5
    x, y = _separable(r=r, c=c)
    model = MLP(5, [], "relu", 2).double()
    with torch.no_grad():
        model.net[0].weight.copy_(torch.tensor([[0, 0, 0, 0, 0], [a, 0, 0, 0, 0]], dtype=torch.float64))
        model.net[0].bias.zero_()
    scale = math.sqrt(2 * (r * r + 1))

    def sigma_at(acc: float) -> float:
        return a * c / (scale * gaussian.ppf(acc))

    rec = pacbayes_measures(model, model, x, y, deviation=0.1, depth=20, samples=40, tolerance=0.01, seed=0)
    assert rec["base_accuracy"] == 1.0 and rec["search"]["plain"]["converged"] and rec["at_interval_top"] == []
    sigma = rec["values"]["pacbayes_sigma"]
    assert sigma_at(0.91) * 0.97 <= sigma <= sigma_at(0.89) * 1.03
    assert rec["values"]["pacbayes_flatness"] == pytest.approx(1 / sigma**2)

    def spread(samples: int) -> float:
        sig = [pacbayes_measures(model, model, x[:1000], y[:1000], 0.1, 12, samples, 1e-4, seed)["values"][
            "pacbayes_sigma"] for seed in range(6)]
        return float(np.std(sig))

    assert spread(24) < 0.6 * spread(2)


def _sign_split(n: int = 3000, d: int = 6, seed: int = 0):
    """Class 0: every coordinate > 0; class 1: every coordinate < 0. For a bias-free linear classifier with
    logit rows w₀, w₁ (v = w₀ − w₁ > 0 entrywise), every example's worst corner of a box |u| ≤ r is the same
    u = (−r₀, +r₁), so the worst-case accuracy is known in closed form."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.rand(n, d, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g, dtype=torch.float64)
    mag = mag + 0.05 * torch.rand(n, d, generator=g, dtype=torch.float64) + 1e-3
    y = (torch.rand(n, generator=g) < 0.5).long()
    x = torch.where(y[:, None] == 0, mag, -mag)
    return x, y


def test_sharpness_flatness_matches_the_closed_form_worst_case_of_a_linear_classifier():
    """Jiang's sharpness.flatness: the worst case over the box |u_i| ≤ α (magnitude-aware: α|w_i| + ε) lowers
    example i's margin mᵢ = (w₀ − w₁)·|xᵢ| by 2α‖xᵢ‖₁ (by Σ_j (α(|w₀ⱼ| + |w₁ⱼ|) + 2ε)|xᵢⱼ|), so it is misclassified
    exactly when α > tᵢ = mᵢ / 2‖xᵢ‖₁ (resp. (mᵢ − 2ε‖xᵢ‖₁) / Σ_j (|w₀ⱼ| + |w₁ⱼ|)|xᵢⱼ|). The search's α* must sit
    where the fraction of tᵢ < α is the deviation 0.1 ± its tolerance. The nearest wrong definitions miss that
    window: the expectation over random signs in the box leaves almost every example correct at that α, and a
    box without ε (or with ε on one logit row only) puts α*_mag 0.015–0.03 higher."""
    from landscape.measures.worst_case import sharpness_flatness_measures

    x, y = _sign_split()
    model = nn.Sequential(nn.Linear(6, 2, bias=False)).double()
    w0 = torch.tensor([1.0, 0.5, 2.0, 0.3, 1.2, 0.8], dtype=torch.float64)
    w1 = torch.tensor([-0.2, 0.1, 0.4, -0.5, 0.0, 0.3], dtype=torch.float64)
    with torch.no_grad():
        model[0].weight.copy_(torch.stack([w0, w1]))
    ax = x.abs()
    margin = ax @ (w0 - w1)
    eps = 0.02  # large enough that omitting ε, or adding it once instead of per row, leaves the window below
    t_plain = margin / (2 * ax.sum(1))
    t_mag = (margin - 2 * eps * ax.sum(1)) / (ax @ (w0.abs() + w1.abs()))
    rec = sharpness_flatness_measures(model, x, y, deviation=0.1, depth=25, steps=4, tolerance=0.005,
                                      magnitude_eps=eps)
    assert rec["base_accuracy"] == 1.0
    for t, key, search in ((t_plain, "sharpness_alpha", "plain"), (t_mag, "sharpness_mag_alpha", "magnitude")):
        alpha = rec["values"][key]
        assert rec["search"][search]["converged"]
        error = float((t < alpha).double().mean())
        assert abs(error - 0.1) < 0.005, (search, alpha, error)
        lo, hi = torch.quantile(t, torch.tensor([0.094, 0.106], dtype=torch.float64)).tolist()
        assert lo <= alpha <= hi
    assert rec["values"]["sharpness_flatness"] == pytest.approx(1 / rec["values"]["sharpness_alpha"] ** 2)
    # the expectation over random signs at the same α: far fewer errors than the worst case's 10%
    g = torch.Generator().manual_seed(1)
    alpha = rec["values"]["sharpness_alpha"]
    signs = torch.randint(0, 2, (200, 2, 6), generator=g).double() * 2 - 1
    random_errors = [float(((x @ (model[0].weight + alpha * s).T).argmax(1) != y).double().mean()) for s in signs]
    assert np.mean(random_errors) < 0.03


def test_weightwatcher_alpha_of_a_planted_power_law_and_the_package_itself():
    import weightwatcher as ww

    from landscape.measures.spectra import weightwatcher_measures

    for alpha in (2.5, 4.0):
        g = torch.Generator().manual_seed(0)
        n_in, m = 1000, 500
        q = (torch.arange(m, dtype=torch.float64) + 0.5) / m
        lam = (1 - q) ** (-1 / (alpha - 1))  # the quantiles of p(λ) ∝ λ^(−α), λ ≥ 1
        u, _ = torch.linalg.qr(torch.randn(n_in, m, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
        layer = nn.Linear(n_in, m, bias=False)
        with torch.no_grad():
            layer.weight.copy_(((u * lam.sqrt()) @ v.T).T.float())  # eigenvalues of WᵀW: λ
        rec = weightwatcher_measures(nn.Sequential(layer))
        assert rec["values"]["ww_alpha"] == pytest.approx(alpha, abs=0.1)
        assert rec["layers"][0]["num_evals"] == m and rec["version"] == ww.__version__
        direct = ww.WeightWatcher(model=nn.Sequential(layer)).get_summary(
            ww.WeightWatcher(model=nn.Sequential(layer)).analyze())
        assert rec["values"]["ww_alpha"] == pytest.approx(float(direct["alpha"]), rel=1e-12)
        assert rec["values"]["ww_alpha_weighted"] == pytest.approx(float(direct["alpha_weighted"]), rel=1e-12)


def test_steps_to_loss_counts_steps_at_epoch_resolution():
    from landscape.measures.optimization import steps_to_loss

    history = {"history": [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.12},
                           {"epoch": 3, "train_loss": 0.09}, {"epoch": 4, "train_loss": 0.05}]}
    got = steps_to_loss(history, n_train=1000, batch_size=128)
    assert (got["steps"], got["epoch"], got["steps_per_epoch"]) == (3 * 8, 3, 8)
    assert steps_to_loss(history, 1000, "full")["steps"] == 3
    assert steps_to_loss(history, 1000, 128, threshold=0.01)["steps"] is None


def test_a_run_that_diverged_in_its_first_epoch_is_a_record_not_a_failure(tmp_path):
    from landscape.checkpoints import checkpoint_path, save_checkpoint
    from landscape.config import MeasuresConfig
    from landscape.measures.record import measure_run

    model = MLP(784, [8], "relu", 10)
    save_checkpoint(checkpoint_path(tmp_path, 0), {"epoch": 0, "model": model.state_dict(), "spec": model.spec})
    record, timings = measure_run(tmp_path, tmp_path, {"diverged": True, "history": []}, MeasuresConfig())
    assert record["epoch"] is None and "diverged" in record["skipped"] and record["values"] == {} and timings == {}


def test_a_search_that_never_reaches_the_deviation_ends_at_the_top_and_says_so():
    """Inputs that are all zero leave a linear classifier one prediction for every example, so on balanced
    labels its accuracy is 0.5 under any perturbation: neither search can lower it by the deviation, both end at
    the top of [0, 2] and mark their values censored there; a search that stops below the top does not."""
    from landscape.measures.pacbayes import bisection, pacbayes_measures
    from landscape.measures.worst_case import sharpness_flatness_measures

    x, y = torch.zeros(200, 4, dtype=torch.float64), torch.arange(200) % 2
    model = MLP(4, [], "relu", 2).double()
    pb = pacbayes_measures(model, model, x, y, deviation=0.1, depth=10, samples=4, tolerance=0.01)
    wc = sharpness_flatness_measures(model, x, y, deviation=0.1, depth=10, steps=2, tolerance=0.01)
    assert pb["base_accuracy"] == wc["base_accuracy"] == 0.5
    top = 2 - 2 / 2**10  # the last midpoint of ten upward halvings
    for rec, keys in ((pb, ("pacbayes_sigma", "pacbayes_mag_sigma")), (wc, ("sharpness_alpha", "sharpness_mag_alpha"))):
        assert [rec["values"][k] for k in keys] == [top, top]
        assert all(s["at_top"] and not s["converged"] for s in rec["search"].values())
    assert set(pb["at_interval_top"]) >= {"pacbayes_flatness", "pacbayes_mag_flatness", "pacbayes_orig"}
    assert set(wc["at_interval_top"]) == {"sharpness_flatness", "sharpness_alpha", "sharpness_mag_flatness",
                                          "sharpness_mag_alpha"}
    # a search that stopped below the top, within or out of its depth, is not censored
    assert bisection(lambda s: (s / 2, {}), 0.1, 10, 0.01)[2:] == (True, False)
    assert bisection(lambda s: (1.0 if s > 0.3 else 0.0, {}), 0.1, 10, 0.01)[2:] == (False, False)
