"""The model and optimizer family: every architecture's HVP against the dense Hessian of a tiny instance,
the squared-error loss and its stability threshold, full-batch steps, Adam."""

import math

import pytest
import torch

from landscape.config import ModelConfig, TrainConfig
from landscape.curvature.eigenvalues import lanczos
from landscape.curvature.hvp import HessianOperator
from landscape.evaluation import sum_loss
from landscape.geometry import stability_threshold
from landscape.models import CNN, MLP, build_model, make_model, recompute_batch_norm
from landscape.parameters import flatten
from landscape.training import make_optimizer, train_epoch
from tests.helpers import dense_hessian


def _warm_batch_norm(model, x):
    """Non-trivial running statistics (as after training), then eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x * 1.3 + 0.2)
    model.eval()


def tiny(arch: str, batch_norm: bool):
    torch.manual_seed(0)
    if arch == "cnn":
        model = CNN([2, 3], [5], "tanh", 3, batch_norm).double()
        x = torch.randn(24, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    elif arch == "resnet":  # residual MLP: an identity block (8 → 8) and a projected one (8 → 5)
        model = MLP(6, [8, 8, 5], "tanh", 3, batch_norm, skip=True).double()
        x = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    else:
        model = MLP(6, [12, 12], "tanh", 3, batch_norm).double()
        x = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(2))
    if batch_norm:
        _warm_batch_norm(model, x)
    return model, x, y


@pytest.mark.parametrize(("arch", "batch_norm", "loss"), [
    ("cnn", False, "cross_entropy"), ("cnn", True, "cross_entropy"), ("mlp", True, "cross_entropy"),
    ("mlp", False, "mse"), ("cnn", False, "mse"), ("mlp", True, "mse"),
    ("resnet", False, "cross_entropy"), ("resnet", True, "mse"),
])
def test_every_model_and_loss_hvp_matches_the_dense_hessian(arch, batch_norm, loss):
    model, x, y = tiny(arch, batch_norm)
    H = dense_hessian(model, x, y, loss)
    op = HessianOperator(model, x, y, loss_fn=sum_loss(loss), chunk_size=10)
    analytic = arch == "mlp" and not batch_norm  # residual blocks: the autograd route, and it says so
    assert op.route.startswith("analytic R-op") == analytic, op.route
    V = torch.randn(op.n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for i in range(3):
        torch.testing.assert_close(op.matvec(V[:, i]), H @ V[:, i], rtol=1e-9, atol=1e-11)
    exact = float(torch.linalg.eigvalsh(H)[-1])
    assert lanczos(op, max_iters=200, tol=1e-8).lambda_max == pytest.approx(exact, rel=1e-7)


def test_batch_norm_is_probed_with_its_running_statistics():
    # in eval mode the loss of one example does not depend on the others: chunking cannot change H
    model, x, y = tiny("mlp", True)
    v = torch.randn(flatten(model).numel(), dtype=torch.float64)
    whole = HessianOperator(model, x, y, chunk_size=len(x)).matvec(v)
    ones = HessianOperator(model, x, y, chunk_size=1).matvec(v)
    torch.testing.assert_close(whole, ones, rtol=1e-10, atol=1e-12)


def test_recomputed_batch_norm_statistics_are_the_data_moments():
    model, x, _ = tiny("mlp", True)
    recompute_batch_norm(model, x, batch_size=7)  # uneven batches: the moments must not depend on them
    assert not model.training
    first, second = model.net[1], model.net[4]
    with torch.no_grad():
        z1 = model.net[0](x)
        z2 = model.net[3](model.net[2](first(z1)))  # the second layer's input under the *new* first statistics
    for bn, z in ((first, z1), (second, z2)):
        torch.testing.assert_close(bn.running_mean, z.mean(0), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(bn.running_var, z.var(0, unbiased=True), rtol=1e-10, atol=1e-12)


def test_squared_error_stability_threshold_on_a_quadratic():
    """A linear model under the squared error is a quadratic in θ: full-batch GD with η·λ_max just below 2
    converges and just above 2 diverges (the threshold the EoS study compares against)."""
    torch.manual_seed(0)
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (64,))
    base = torch.nn.Sequential(torch.nn.Linear(5, 3)).double()
    lam = lanczos(HessianOperator(base, x, y, loss_fn=sum_loss("mse")), max_iters=30, tol=1e-10).lambda_max
    assert stability_threshold(0.0, False) == 2.0
    outcomes = {}
    for factor in (1.9, 2.1):
        model = torch.nn.Sequential(torch.nn.Linear(5, 3)).double()
        model.load_state_dict(base.state_dict())
        cfg = TrainConfig(batch_size="full", lr=factor / lam, momentum=0.0, loss="mse")
        opt = make_optimizer(model, cfg)
        losses = [train_epoch(model, opt, x, y, cfg, torch.Generator())[0] for _ in range(400)]
        outcomes[factor] = losses[-1] < losses[0] and math.isfinite(losses[-1])
    assert outcomes == {1.9: True, 2.1: False}


def test_full_batch_takes_exactly_one_gradient_step_per_epoch():
    model = make_model(ModelConfig(hidden=[8], activation="tanh"), 6, 3).double()
    x = torch.randn(50, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    cfg = TrainConfig(batch_size="full", lr=0.3, momentum=0.0)
    theta0 = flatten(model)
    grad = HessianOperator(model, x, y, analytic=False).grad  # ∇ of the mean loss over all 50 examples
    opt = make_optimizer(model, cfg)
    steps = []
    opt.register_step_post_hook(lambda *_: steps.append(1))
    train_epoch(model, opt, x, y, cfg, torch.Generator())
    assert len(steps) == 1
    torch.testing.assert_close(flatten(model), theta0 - 0.3 * grad, rtol=1e-12, atol=1e-14)


def test_adam_uses_momentum_as_beta1_and_reports_no_raw_threshold():
    model = make_model(ModelConfig(hidden=[8]), 6, 3)
    opt = make_optimizer(model, TrainConfig(optimizer="adam", lr=1e-3, momentum=0.8, adam_beta2=0.99))
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"] == (0.8, 0.99)
    assert stability_threshold(0.8, False, "adam") is None


def test_models_rebuild_from_their_spec():
    for model in (CNN([2, 3], [5], "relu", 10, True), MLP(784, [16], "gelu", 10, False)):
        other = build_model(model.spec)
        other.load_state_dict(model.state_dict())
        x = torch.randn(4, 784)
        model.eval()
        other.eval()
        torch.testing.assert_close(other(x), model(x))


def test_a_cuda_device_this_machine_lacks_fails_in_one_line():
    from landscape.errors import LandscapeError
    from landscape.runtime import resolve_device

    assert str(resolve_device("cpu")) == "cpu"
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: nothing to refuse")
    assert str(resolve_device("auto")) == "cpu"
    with pytest.raises(LandscapeError, match=r"train.device = cuda:1: this machine has no CUDA device.*allowed here"):
        resolve_device("cuda:1")


def test_checkpoints_are_saved_from_cpu_tensors():
    from landscape.training import to_cpu

    sd = MLP(4, [3], "relu", 2).state_dict()
    assert to_cpu(sd) is sd  # on the CPU already: the same object, so CPU checkpoint bytes do not change
    meta = MLP(4, [3], "relu", 2, batch_norm=True).state_dict()
    assert to_cpu({"m": meta})["m"] is meta


def test_a_residual_net_with_its_branches_zeroed_is_the_identity_through_the_blocks():
    """h_i = h_{i−1} + f_i(h_{i−1}): with every branch f_i zeroed (tanh(0) = 0), the blocks pass their input
    through, and the network is its head after its stem; a projection shortcut where the widths differ."""
    torch.manual_seed(4)
    model = MLP(6, [8, 8, 8], "tanh", 3, skip=True).double()
    with torch.no_grad():
        for block in model.net.blocks:
            block.body[0].weight.zero_()
            block.body[0].bias.zero_()
    x = torch.randn(20, 6, dtype=torch.float64)
    torch.testing.assert_close(model(x), model.net.head(model.net.stem(x)), rtol=0, atol=0)
    assert all(isinstance(b.shortcut, torch.nn.Identity) for b in model.net.blocks)
    projected = MLP(6, [8, 5], "relu", 3, skip=True)
    assert isinstance(projected.net.blocks[0].shortcut, torch.nn.Linear)
    assert projected.net.blocks[0].shortcut.bias is None  # ResNet's option B: a linear projection, no bias
    plain = MLP(6, [8], "relu", 3, skip=True)  # one hidden layer: nothing to skip around
    assert isinstance(plain.net, torch.nn.Sequential) and plain.spec["skip_blocks"] == 0


def test_he_initialization_is_the_same_for_skip_and_no_skip():
    for skip in (False, True):
        torch.manual_seed(0)
        model = MLP(784, [256] * 4, "relu", 10, skip=skip, init="he")
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                std = float(m.weight.detach().std())
                assert std == pytest.approx((2 / m.in_features) ** 0.5, rel=0.05)
                assert m.bias is None or float(m.bias.detach().abs().max()) == 0.0
    torch.manual_seed(0)
    default = MLP(784, [256], "relu", 10)
    assert float(default.net[0].weight.detach().std()) == pytest.approx((1 / (3 * 784)) ** 0.5, rel=0.05)
