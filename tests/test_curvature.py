"""HVPs, Lanczos, power iteration, trace estimators and the spectral density against exact Hessians."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from landscape.curvature.density import spectral_density
from landscape.curvature.eigenvalues import lanczos, power_iteration
from landscape.curvature.hvp import HessianOperator
from landscape.curvature.trace import hutchinson_trace, hutchpp_trace
from tests.helpers import dense_hessian, make_quadratic, tiny_network

SPECTRUM = [10.0, 7.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1, -0.3, -1.0, -12.0]


def test_hvp_is_exact_for_the_whole_set_however_chunked():
    model, c, s, loss_fn, H = make_quadratic(SPECTRUM, n_samples=50)
    v = torch.randn(len(SPECTRUM), dtype=torch.float64)
    for chunk, keep in ((50, True), (7, True), (7, False), (1, True)):
        op = HessianOperator(model, c, s, loss_fn=loss_fn, chunk_size=chunk, keep_graph=keep)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-12, atol=1e-12)
        # gradient of the mean loss over all 50 samples
        g_exact = model.A @ (s[:, None] * (model.theta.detach() - c)).mean(0)
        torch.testing.assert_close(op.grad, g_exact, rtol=1e-12, atol=1e-12)


def test_hvp_depends_on_the_sample_set():
    model, c, s, loss_fn, H = make_quadratic(SPECTRUM, n_samples=50)
    op = HessianOperator(model, c[:10], s[:10], loss_fn=loss_fn, chunk_size=4)
    v = torch.ones(len(SPECTRUM), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), s[:10].mean() * model.A @ v)
    assert not torch.allclose(op.matvec(v), H @ v)


def test_lanczos_returns_largest_algebraic_not_largest_magnitude():
    model, c, s, loss_fn, H = make_quadratic(SPECTRUM)
    exact = torch.linalg.eigvalsh(H)
    op = HessianOperator(model, c, s, loss_fn=loss_fn)
    res = lanczos(op, k=3, max_iters=12, tol=1e-8, smallest=True)
    assert res.lambda_max == pytest.approx(float(exact[-1]), rel=1e-9)
    assert res.lambda_max > 0 > float(exact[0])  # the largest-magnitude eigenvalue is negative here
    assert list(res.eigenvalues) == pytest.approx(exact.flip(0)[:3].tolist(), rel=1e-9)
    assert res.smallest == pytest.approx(float(exact[0]), rel=1e-9)
    assert all(res.converged) and max(res.residuals) < 1e-8
    # power iteration, the reference method, converges to the largest magnitude (negative) one
    pw = power_iteration(HessianOperator(model, c, s, loss_fn=loss_fn), max_iters=500, tol=1e-8)
    assert pw.lambda_max == pytest.approx(float(exact[0]), rel=1e-6)


def test_lanczos_flags_non_convergence_honestly():
    model, c, s, loss_fn, _ = make_quadratic([1.0 + 0.01 * i for i in range(60)])
    res = lanczos(HessianOperator(model, c, s, loss_fn=loss_fn), max_iters=3, tol=1e-10)
    assert res.converged == (False,) and res.residuals[0] > 1e-10
    assert res.num_products == 3 + 1  # three Lanczos steps + one measured residual


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "sigmoid", "softplus", "elu"])
def test_analytic_rop_route_matches_dense_hessian_and_autograd(activation):
    model, x, y = tiny_network(activation, n_samples=40, seed=2)
    H = dense_hessian(model, x, y)
    rop = HessianOperator(model, x, y, chunk_size=16)  # 3 chunks: accumulation across chunks is exercised
    auto = HessianOperator(model, x, y, chunk_size=16, analytic=False)
    assert rop.route.startswith("analytic R-op") and auto.route == "cached-graph double backward"
    V = torch.randn(rop.n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for i in range(4):
        exact = H @ V[:, i]
        torch.testing.assert_close(rop.matvec(V[:, i]), exact, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(auto.matvec(V[:, i]), exact, rtol=1e-10, atol=1e-12)
    assert rop.loss == pytest.approx(auto.loss, rel=1e-13)
    torch.testing.assert_close(rop.grad, auto.grad, rtol=1e-12, atol=1e-14)
    assert rop.num_products == 4


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_analytic_rop_with_constant_input_features(activation):
    # blank-border pixels: features constant over a chunk take the rank-one shortcut of the input layer
    model, x, y = tiny_network(activation, n_samples=40, seed=6)
    x[:, 1], x[:, 4] = 0.0, -0.42
    x[:20, 0] = 1.5  # constant within the first chunk of 20 only
    H = dense_hessian(model, x, y)
    op = HessianOperator(model, x, y, chunk_size=20)
    assert op._chunks_rop[0].const_idx.tolist() == [0, 1, 4] and op._chunks_rop[1].const_idx.tolist() == [1, 4]
    V = torch.randn(op.n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for i in range(3):
        torch.testing.assert_close(op.matvec(V[:, i]), H @ V[:, i], rtol=1e-10, atol=1e-12)


def test_analytic_route_is_not_used_where_it_does_not_apply():
    model, c, s, loss_fn, _ = make_quadratic(SPECTRUM)
    assert HessianOperator(model, c, s, loss_fn=loss_fn).route == "cached-graph double backward"
    net, x, y = tiny_network("relu")
    assert HessianOperator(net, x, y, keep_graph=False).route == "recomputed double backward"
    net.net[1] = torch.nn.LeakyReLU()  # no analytic second derivative for it here: autograd route
    assert HessianOperator(net, x, y).route == "cached-graph double backward"


@pytest.mark.parametrize("start", ["random", "random+gradient"])
def test_lanczos_start_vectors_give_the_same_verified_eigenvalues(start):
    model, x, y = tiny_network("tanh", seed=4)
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y)).flip(0)
    res = lanczos(HessianOperator(model, x, y), k=3, max_iters=150, tol=1e-8, start=start)
    assert list(res.eigenvalues) == pytest.approx(exact[:3].tolist(), rel=1e-6)
    assert all(res.converged) and max(res.residuals) <= 1e-8


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lanczos_start_vector_is_the_documented_one(dtype):
    # one Lanczos step returns the Rayleigh quotient q1ᵀHq1 of the start vector itself; z is drawn in the
    # operator's dtype (float32 for a float32 model) from the seeded generator
    model, x, y = tiny_network("tanh", seed=4)
    H = dense_hessian(model, x, y)
    model, x = model.to(dtype), x.to(dtype)
    op = HessianOperator(model, x, y)
    z = torch.randn(op.n, generator=torch.Generator().manual_seed(3), dtype=dtype).double()
    z /= z.norm()
    g = op.grad.double()
    rel = 1e-10 if dtype == torch.float64 else 1e-5
    for start, q in (("random", z), ("random+gradient", z + g / g.norm())):
        q = q / q.norm()
        res = lanczos(op, k=1, max_iters=1, tol=1e-8, seed=3, start=start)
        assert res.iterations == 1
        assert res.lambda_max == pytest.approx(float(q @ H @ q), rel=rel)


def test_lanczos_rejects_an_unknown_start():
    model, x, y = tiny_network("tanh")
    with pytest.raises(ValueError, match="start = 'gradient'; allowed: 'random', 'random\\+gradient'"):
        lanczos(HessianOperator(model, x, y), start="gradient")


def test_float32_lanczos_basis_reaches_the_float64_answer():
    model, x, y = tiny_network("tanh", n_samples=60, seed=5)
    exact = float(torch.linalg.eigvalsh(dense_hessian(model, x, y))[-1])
    res = lanczos(HessianOperator(model.float(), x.float(), y), k=1, max_iters=150, tol=1e-4)
    assert res.converged[0] and res.residuals[0] <= 1e-4
    assert res.lambda_max == pytest.approx(exact, rel=1e-5)


def test_tiny_network_top5_match_dense_hessian():
    model, x, y = tiny_network("tanh")
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y)).flip(0)
    op = HessianOperator(model, x, y, chunk_size=16)
    res = lanczos(op, k=5, max_iters=150, tol=1e-9)
    rel = (torch.tensor(res.eigenvalues) - exact[:5]).abs() / exact[:5].abs()
    assert rel.max() <= 1e-4, (res.eigenvalues, exact[:5])
    assert all(res.converged)


def test_tiny_relu_network_lambda_max_and_grad_norm():
    model, x, y = tiny_network("relu", seed=3)
    H = dense_hessian(model, x, y)
    exact = torch.linalg.eigvalsh(H)
    op = HessianOperator(model, x, y, chunk_size=7)
    res = lanczos(op, k=1, max_iters=150, tol=1e-9)
    assert res.lambda_max == pytest.approx(float(exact[-1]), rel=1e-4)
    # grad of the mean loss by plain autograd on the whole set
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert float(op.grad.norm()) == pytest.approx(float(g.norm()), rel=1e-10)


def test_hutchinson_trace_within_three_standard_errors():
    model, x, y = tiny_network("tanh")
    exact = float(torch.trace(dense_hessian(model, x, y)))
    res = hutchinson_trace(HessianOperator(model, x, y), samples=200, seed=1)
    assert res.samples == 200 and res.num_products == 200
    assert abs(res.trace - exact) <= 3 * res.stderr
    assert res.stderr < 0.2 * abs(exact)  # the error bar is informative, not vacuous


def test_hutchinson_on_quadratic_is_unbiased():
    model, c, s, loss_fn, H = make_quadratic(SPECTRUM)
    res = hutchinson_trace(HessianOperator(model, c, s, loss_fn=loss_fn), samples=400, seed=0)
    assert abs(res.trace - float(torch.trace(H))) <= 3 * res.stderr


def test_spectral_density_recovers_a_known_spectrum():

    model, c, s, loss_fn, H = make_quadratic(SPECTRUM)
    exact = torch.linalg.eigvalsh(H)
    sd = spectral_density(HessianOperator(model, c, s, loss_fn=loss_fn), runs=30, steps=len(SPECTRUM), seed=0)
    # with as many steps as dimensions the quadrature nodes are the eigenvalues, weights sum to 1 per run
    for nodes, weights in zip(sd.nodes, sd.weights, strict=True):
        assert sorted(nodes) == pytest.approx(exact.tolist(), rel=1e-8, abs=1e-8)
        assert sum(weights) == pytest.approx(1.0, abs=1e-10)
    grid, dens = torch.tensor(sd.grid), torch.tensor(sd.density)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-3)
    # its mean estimates tr(H)/n within the stated error
    assert abs(sd.mean - float(torch.trace(H)) / len(SPECTRUM)) <= 3 * sd.mean_stderr
    assert sd.num_products == 30 * len(SPECTRUM)


def test_spectral_density_of_a_tiny_network_spans_its_spectrum():

    model, x, y = tiny_network("tanh")
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y))
    sd = spectral_density(HessianOperator(model, x, y), runs=8, steps=60, seed=1)
    lo = min(min(n) for n in sd.nodes)
    hi = max(max(n) for n in sd.nodes)
    assert hi == pytest.approx(float(exact[-1]), rel=1e-6)  # extremes converge first in Lanczos
    assert lo == pytest.approx(float(exact[0]), rel=1e-3)
    assert abs(sd.mean - float(exact.mean())) <= 4 * sd.mean_stderr
    assert float(torch.trapezoid(torch.tensor(sd.density), torch.tensor(sd.grid))) == pytest.approx(1.0, abs=1e-3)


def test_hutchpp_is_exact_when_the_sketch_spans_everything():
    model, c, s, loss_fn, H = make_quadratic(SPECTRUM)
    res = hutchpp_trace(HessianOperator(model, c, s, loss_fn=loss_fn), samples=3 * len(SPECTRUM), seed=0)
    assert res.trace == pytest.approx(float(torch.trace(H)), rel=1e-10)
    assert res.num_products == 3 * len(SPECTRUM) and res.method == "hutch++"


def test_hutchpp_beats_hutchinson_on_a_spectrum_with_outliers():
    # a few large eigenvalues on a flat bulk: the shape of a classifier's Hessian
    spectrum = [50.0, 30.0, 20.0] + [0.1 + 0.01 * i for i in range(57)]
    model, c, s, loss_fn, H = make_quadratic(spectrum)
    exact = float(torch.trace(H))
    op = HessianOperator(model, c, s, loss_fn=loss_fn)
    err_h = [abs(hutchinson_trace(op, 12, seed=i).trace - exact) for i in range(30)]
    err_pp = [abs(hutchpp_trace(op, 12, seed=i).trace - exact) for i in range(30)]
    assert sum(err_pp) < 0.5 * sum(err_h), (sum(err_pp), sum(err_h))
    within = [abs(r.trace - exact) <= 3 * r.stderr for r in (hutchpp_trace(op, 12, seed=i) for i in range(30))]
    assert sum(within) >= 27  # the reported standard error is honest


def test_hutchpp_tiny_network_within_three_standard_errors():
    model, x, y = tiny_network("tanh")
    exact = float(torch.trace(dense_hessian(model, x, y)))
    res = hutchpp_trace(HessianOperator(model, x, y), samples=90, seed=1)
    assert abs(res.trace - exact) <= 3 * res.stderr, (res.trace, exact, res.stderr)
    assert res.stderr < 0.2 * abs(exact)


def test_hutchpp_needs_three_products():
    model, c, s, loss_fn, _ = make_quadratic(SPECTRUM)
    with pytest.raises(ValueError, match="at least 3"):
        hutchpp_trace(HessianOperator(model, c, s, loss_fn=loss_fn), samples=2)


LIMITED = textwrap.dedent("""
    import resource, sys, torch
    from landscape.curvature.hvp import HessianOperator
    from landscape.models import MLP
    torch.manual_seed(0)
    model = MLP(784, [512, 512], "relu", 10)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20000, 784, generator=g), torch.randint(0, 10, (20000,), generator=g)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=g)
    size = next(int(s.split()[1]) for s in open("/proc/self/status") if s.startswith("VmSize:")) * 1024
    if len(sys.argv) > 2:  # a real memory limit: the address space in use plus this many MiB
        lim = size + int(sys.argv[2]) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    op = HessianOperator(model, x, y, chunk_size=1000)
    torch.save({"route": op.route, "hv": op.matvec(v), "grad": op.grad}, sys.argv[1])
""")


def test_cache_that_does_not_fit_in_memory_falls_back_and_says_so(tmp_path):
    # a real allocation failure: the child's address space is capped so that the ~270 MB cache of
    # 20,000 examples cannot be built, while one 1,000-example chunk at a time still fits
    root = Path(__file__).resolve().parent.parent
    script = tmp_path / "limited.py"
    script.write_text(LIMITED)
    out = {}
    for name, extra in (("limited", ["220"]), ("free", [])):
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / f"{name}.pt"), *extra], cwd=root,
                              capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(root)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[name] = torch.load(tmp_path / f"{name}.pt")
        out[name]["stderr"] = proc.stderr
    assert out["free"]["route"].startswith("analytic R-op")
    assert out["limited"]["route"] == "recomputed double backward (the cache did not fit in memory)"
    assert "do not fit in memory" in out["limited"]["stderr"] and "can't allocate memory" in out["limited"]["stderr"]
    torch.testing.assert_close(out["limited"]["hv"], out["free"]["hv"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["limited"]["grad"], out["free"]["grad"], rtol=1e-4, atol=1e-7)


def test_asking_for_lambda_min_changes_neither_lambda_max_nor_its_cost():
    # λ_min converges much more slowly than λ_max: its criterion must not hold the top result back
    model, x, y = tiny_network("tanh", seed=4)
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y))
    top = lanczos(HessianOperator(model, x, y), k=1, max_iters=200, tol=1e-6)
    both = lanczos(HessianOperator(model, x, y), k=1, max_iters=200, tol=1e-6, smallest=True)
    assert both.eigenvalues == top.eigenvalues and both.residuals == top.residuals
    assert both.iterations == top.iterations < both.smallest_iterations
    assert top.smallest_converged is None and both.smallest_converged is True
    assert both.smallest == pytest.approx(float(exact[0]), rel=1e-4)
    unconverged = lanczos(HessianOperator(model, x, y), k=1, max_iters=top.iterations + 1, tol=1e-6,
                          smallest=True)
    assert unconverged.converged == (True,) and unconverged.smallest_converged is False


def test_single_vector_lanczos_reports_distinct_eigenvalues_documented_limitation():
    # multiplicity is invisible to single-vector Lanczos: {10, 10, 5, ...} gives top-2 = [10, 5], both
    # verified; README and docs/theory.md say so next to lambda_top
    model, c, s, loss_fn, _ = make_quadratic([10.0, 10.0, 5.0, 2.0, 1.0, 0.5])
    scale = float(s.mean())
    res = lanczos(HessianOperator(model, c, s, loss_fn=loss_fn), k=2, max_iters=6, tol=1e-8)
    assert list(res.eigenvalues) == pytest.approx([10.0 * scale, 5.0 * scale], rel=1e-8)
    assert all(res.converged)


def _planted(spikes: list[float], n: int = 600, seed: int = 0) -> list[float]:
    """A Marchenko–Pastur bulk (eigenvalues of XᵀX/m, X Gaussian m × (n − C), ratio ½: support [0.09, 2.9])
    with the C ``spikes`` planted above it."""
    g = torch.Generator().manual_seed(seed)
    bulk_n = n - len(spikes)
    x = torch.randn(2 * bulk_n, bulk_n, generator=g, dtype=torch.float64)
    return sorted(torch.linalg.eigvalsh(x.T @ x / (2 * bulk_n)).tolist() + list(spikes))


@pytest.mark.parametrize("spikes", [[8.0 + 2 * i for i in range(10)], []], ids=["10 spikes", "bulk alone"])
def test_the_outlier_rule_counts_planted_spikes_and_nothing_in_a_bulk(spikes):
    from landscape.curvature.outliers import count_outliers

    model, c, s, loss_fn, _ = make_quadratic(_planted(spikes), n_samples=20, seed=5)
    op = HessianOperator(model, c, s, loss_fn=loss_fn)
    top = lanczos(op, k=20, max_iters=120, tol=1e-6, seed=0, start="random").eigenvalues
    sd = spectral_density(op, runs=4, steps=40, seed=1)
    got = count_outliers(list(top), list(sd.grid), list(sd.density), sd.sigma, op.n)
    assert got["count"] == len(spikes) and not got["saturated"]
    assert 2.0 < got["bulk_edge"] < 4.0  # the Marchenko–Pastur edge is (1 + √½)² = 2.91
