"""Bad params fail before any work with one line naming the key, the value and what is allowed."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from landscape.config import ConfigError, Params
from landscape.params_file import load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(path: str, value, delete: bool = False) -> dict:
    raw = copy.deepcopy(DEFAULT)
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return raw


def test_default_params_are_valid_and_reproduce_the_original_study():
    p = parse_params(DEFAULT)
    assert p == Params()  # params.yaml spells out exactly the defaults
    assert p.data.dataset == "mnist" and p.train.momentum == 0.9 and p.train.epochs == 10
    assert p.probed_epochs() == list(range(11))
    assert (p.interpolate.start_epoch, p.resolved_end_epoch()) == (2, 10)


# (dotted key, bad value, words the message must contain)
CASES = [
    ("train.lr", -0.1, ["train.lr", "-0.1", "greater than 0"]),
    ("train.lr", "fast", ["train.lr", "'fast'", "number"]),
    ("train.epochs", 0, ["train.epochs", "greater than or equal to 1"]),
    ("train.epochs", 2.5, ["train.epochs", "2.5", "integer"]),
    ("train.momentum", 1.0, ["train.momentum", "less than 1"]),
    ("train.batch_size", True, ["train.batch_size", "True", "integer"]),
    ("model.activation", "swish", ["model.activation", "'swish'", "'relu'", "'tanh'", "'gelu'"]),
    ("model.hidden", [], ["model.hidden", "at least one"]),
    ("model.hidden", [256, -3], ["model.hidden", "1..65536"]),
    ("data.dataset", "cifar10", ["data.dataset", "'mnist'", "'fashion-mnist'"]),
    ("data.source", "/nonexistent/idx", ["data.source", "does not exist", "auto, download, offline"]),
    ("data.train_samples", -5, ["data.train_samples", "greater than 0"]),
    ("probe.samples", 0, ["probe.samples", "greater than or equal to 1"]),
    ("probe.tol", 2.0, ["probe.tol", "less than 1"]),
    ("probe.lanczos_iters", 1, ["probe.lanczos_iters", "greater than or equal to 2"]),
    ("probe.trace_method", "hutch", ["probe.trace_method", "'hutch'", "'hutchinson'", "'hutch++'"]),
    ("probe.lanczos_start", "gradient", ["probe.lanczos_start", "'gradient'", "'random+gradient'", "'random'"]),
    ("interpolate.start_epoch", 11, ["interpolate.start_epoch", "11", "saved epochs", "[0, 1, 2"]),
    ("interpolate.end_epoch", 50, ["interpolate.end_epoch", "50", "saved epochs"]),
    ("interpolate.start_epoch", 10, ["interpolate.start_epoch", "equals interpolate.end_epoch"]),
    ("interpolate.alpha_min", 0.5, ["interpolate.alpha_min", "<= 0"]),
    ("interpolate.points", 1, ["interpolate.points", "greater than or equal to 2"]),
    ("interpolate.points", 2, ["interpolate.points = 2 over [0.0, 1.0]", "no point strictly between",
                               "0 by construction"]),
    ("plot.style", "seaborn-fancy", ["plot.style", "'ggplot'"]),
    ("train.learning_rate", 0.1, ["unknown key 'train.learning_rate'", "did you mean 'train.lr'", "allowed keys"]),
    ("probe.sharpnes_radius", 0.1, ["unknown key", "did you mean 'probe.sharpness_radius'"]),
    ("optimizer", {"lr": 1}, ["unknown key 'optimizer'", "allowed keys here: data, model, train"]),
    ("train", 5, ["train = 5", "must be a mapping"]),
    # values no run can use: non-finite floats, seeds torch cannot take, impossible combinations
    ("train.lr", float("inf"), ["train.lr", "finite number"]),
    ("probe.sharpness_radius", float("nan"), ["probe.sharpness_radius", "finite number"]),
    ("interpolate.alpha_max", float("inf"), ["interpolate.alpha_max", "finite number"]),
    ("train.seed", 2**40, ["train.seed", "less than or equal to 4294967295"]),
    ("train.threads", 0, ["train.threads", "greater than or equal to 1"]),
    ("probe.top_k", 40, ["probe.top_k = 40", "probe.top_k < probe.lanczos_iters"]),
    ("track.run_name", "   ", ["track.run_name", "visible character"]),
    # the surface and connect stages
    ("surface.points", 2, ["surface.points", "greater than or equal to 3"]),
    ("surface.points", 20, ["surface.points = 20 is even", "would not contain its centre", "e.g. 19 or 21"]),
    ("surface.curvature_points", 4, ["surface.curvature_points = 4 is even", "an odd number"]),
    ("surface.range", 0.0, ["surface.range", "greater than 0"]),
    ("surface.normalization", "per-filter", ["surface.normalization", "'filter'", "'layer'", "'none'"]),
    ("surface.split", "val", ["surface.split", "'train'", "'test'", "'probe'"]),
    ("surface.directions", "eigen", ["surface.directions", "'random'", "'pca'", "'hessian'"]),
    ("probe.adaptive_worst_case_radius", -1.0, ["probe.adaptive_worst_case_radius", "greater than 0"]),
    ("surface.epoch", 11, ["surface.epoch = 11", "no checkpoint", "saved epochs"]),
    ("connect.spawn_epoch", 10, ["connect.spawn_epoch = 10", "a saved epoch before the last"]),
    ("connect.data_seed", 0, ["connect.data_seed = 0 equals train.seed", "same mini-batch order"]),
    ("connect.curve", "spline", ["connect.curve", "'none'", "'bezier'"]),
    ("probe.adaptive_radius", 0.0, ["probe.adaptive_radius", "greater than 0"]),
    ("probe.ascent_steps", 0, ["probe.ascent_steps", "greater than or equal to 1"]),
    ("train.device", "gpu", ["train.device", "auto", "cuda:N"]),
    ("train.batch_size", "half", ["train.batch_size", "'full'"]),
    ("model.arch", "resnet", ["model.arch", "'mlp'", "'cnn'"]),
    ("model.channels", [6], ["model.channels", "two filter counts"]),
    ("model.depth", 4, ["model.hidden = [256, 256] and model.depth = 4", "both given", "one form"]),
    ("model.hidden", None, ["model.hidden is null", "model.depth and model.width"]),
    ("model.depth", 0, ["model.depth", "greater than or equal to 1"]),
    ("model.width", 0, ["model.width", "greater than or equal to 1"]),
    ("model.init", "xavier", ["model.init", "'torch'", "'he'"]),
]


@pytest.mark.parametrize(("key", "value", "words"), CASES, ids=[f"{c[0]}={c[1]!r}" for c in CASES])
def test_bad_value_names_key_value_and_allowed(key, value, words):
    with pytest.raises(ConfigError) as exc:
        parse_params(with_change(key, value))
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def test_depth_and_width_give_the_hidden_widths():
    from landscape.config import hidden_widths

    raw = with_change("model.hidden", None)
    raw["model"].update({"depth": 3, "width": 64})
    assert hidden_widths(parse_params(raw).model) == [64, 64, 64]
    assert hidden_widths(parse_params(DEFAULT).model) == [256, 256]


def test_cross_group_checks():
    raw = with_change("train.epochs", 1)  # saved: 0, 1: no trajectory plane
    raw["interpolate"]["start_epoch"] = 0
    raw["surface"]["directions"] = "pca"
    with pytest.raises(ConfigError, match=r"surface.directions = pca with saved checkpoints \[0, 1\]: .* at least 3"):
        parse_params(raw)
    raw = with_change("train.checkpoint_every", 4)  # saved: 0, 4, 8, 10 -> start_epoch 2 has no checkpoint
    with pytest.raises(ConfigError, match=r"interpolate.start_epoch = 2: no checkpoint .* \[0, 4, 8, 10\]"):
        parse_params(raw)
    raw = with_change("data.source", "offline")
    raw["data"]["dataset"] = "fashion-mnist"
    with pytest.raises(ConfigError, match="offline source ships MNIST digits only"):
        parse_params(raw)
    raw = with_change("data.train_samples", 100)
    with pytest.raises(ConfigError, match=r"probe.samples = 2048 exceeds data.train_samples = 100; allowed: 1..100"):
        parse_params(raw)
    with pytest.raises(ConfigError, match="nesterov"):
        parse_params({"train": {"nesterov": True, "momentum": 0.0}})
    raw = with_change("probe.trace_method", "hutch++")
    raw["probe"]["trace_samples"] = 2
    with pytest.raises(ConfigError, match=r"probe.trace_samples = 2 with probe.trace_method = hutch\+\+: allowed: 0"):
        parse_params(raw)
    raw["probe"]["trace_samples"] = 0
    assert parse_params(raw).probe.trace_method == "hutch++"
    raw = with_change("plot.dpi", 600)
    raw["plot"]["width"] = 20.0
    with pytest.raises(ConfigError, match=r"plot.width × plot.dpi = 12000 pixels; allowed: at most 8000"):
        parse_params(raw)


def test_idx_directory_without_files(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"data.source = .* lacks the IDX file\(s\) train-labels-idx1-ubyte"):
        parse_params(with_change("data.source", str(tmp_path)))


UNREADABLE = [
    (b"", "params.yaml is empty"),
    (b"train: [1, 2\nmodel: {", "not valid YAML"),
    (b"- a\n- b\n", "must be a mapping"),
    (b"train:\n  lr: 0.1\n  lr: 0.2\n", "key 'lr' appears twice in one mapping"),
    (b"train:\n  lr: \xff\xfe\n", "is not UTF-8 text"),
    (None, "cannot be read"),  # a directory where the file should be
]


@pytest.mark.parametrize(("content", "words"), UNREADABLE, ids=[w for _, w in UNREADABLE])
def test_unreadable_files(tmp_path, content, words):
    p = tmp_path / "params.yaml"
    if content is None:
        p.mkdir()
    else:
        p.write_bytes(content)
    with pytest.raises(ConfigError, match=words) as exc:
        load_params(p)
    assert "\n" not in str(exc.value)


def test_stage_fails_before_work_and_leaves_outputs_untouched(tmp_path):
    """A stage run by DVC: exit code 2, one line on stderr, nothing written or modified."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change("train.lr", -1.0)))
    (tmp_path / "data").mkdir()
    sentinel = tmp_path / "data" / "dataset.json"
    sentinel.write_text('{"previous": true}\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for stage in ("download", "train", "probe", "interpolate", "plot", "track"):
        proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (stage, proc.stderr)
        err = proc.stderr.strip().splitlines()
        assert err[-1] == "error: params.yaml: train.lr = -1.0 is invalid: Input should be greater than 0", err
    assert sentinel.read_text() == '{"previous": true}\n'
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data", "dataset.json", "params.yaml"]


def test_params_yaml_lists_every_key_with_its_default():
    """A key missing from the file cannot be set by dvc exp run -S (sweeps) and hides its default from users."""
    for group, model in Params.model_fields.items():
        fields = set(model.annotation.model_fields)
        assert set(DEFAULT[group]) == fields, (group, fields ^ set(DEFAULT[group]))
