"""Training: determinism, resume equivalence, divergence as data, safe checkpoint loading."""

import shutil

import pytest
import torch

from landscape.checkpoints import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint, load_model
from landscape.config import ModelConfig, TrainConfig
from landscape.data import prepare
from landscape.sources import offline_mnist
from landscape.training import train

TRAIN = {"batch_size": 32, "lr": 0.1, "momentum": 0.9, "seed": 1}

MODEL = ModelConfig(hidden=[16], activation="relu")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare(offline_mnist(0), root, train_samples=256, test_samples=64, seed=0)
    return root


def states_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_same_seed_same_checkpoints_and_resume_is_bit_identical(tmp_path, data_root):
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, momentum=0.9, seed=1)
    full = train(MODEL, cfg, data_root, tmp_path / "a")
    assert full["checkpoints"] == [0, 1, 2, 3] and not full["diverged"]
    again = train(MODEL, cfg, data_root, tmp_path / "b", resume=False)
    for e in range(4):
        assert checkpoint_path(tmp_path / "a", e).read_bytes() == checkpoint_path(tmp_path / "b", e).read_bytes()
    assert [h["train_loss"] for h in again["history"]] == [h["train_loss"] for h in full["history"]]

    # an interrupted run: only epochs 0 and 1 survived, plus a truncated epoch-2 file
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    checkpoint_path(tmp_path / "c", 3).unlink()
    p2 = checkpoint_path(tmp_path / "c", 2)
    p2.write_bytes(p2.read_bytes()[:1000])
    resumed = train(MODEL, cfg, data_root, tmp_path / "c")
    assert resumed["resumed_from"] == 1
    # epoch 1 came from the checkpoint: its wall time is the one measured when it was trained
    assert resumed["history"][0]["wall_time_s"] == full["history"][0]["wall_time_s"]
    assert resumed["history"][2]["wall_time_s"] is not None  # epoch 3 was trained again
    for e in range(4):
        assert checkpoint_path(tmp_path / "c", e).read_bytes() == checkpoint_path(tmp_path / "a", e).read_bytes()


def test_checkpoints_of_other_params_are_not_resumed(tmp_path, data_root):
    train(MODEL, TrainConfig(epochs=2, batch_size=32, lr=0.1, seed=1), data_root, tmp_path)
    other = TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=1)
    train(MODEL, other, data_root, tmp_path)
    fresh = tmp_path.parent / "fresh"
    train(MODEL, other, data_root, fresh)
    assert checkpoint_path(tmp_path, 2).read_bytes() == checkpoint_path(fresh, 2).read_bytes()


def test_checkpoint_layout_and_load_model(tmp_path, data_root):
    cfg = TrainConfig(epochs=4, batch_size=64, checkpoint_every=3, seed=0)
    train(MODEL, cfg, data_root, tmp_path)
    assert sorted(list_checkpoints(tmp_path)) == [0, 3, 4]
    ckpt = load_checkpoint(checkpoint_path(tmp_path, 3))
    assert ckpt["epoch"] == 3 and ckpt["model"]["hidden"] == [16] and ckpt["optimizer"]["lr"] == cfg.lr
    model = load_model(checkpoint_path(tmp_path, 4))
    assert not model.training and model(torch.zeros(2, 784)).shape == (2, 10)


def test_divergence_is_recorded_not_raised(tmp_path, data_root):
    res = train(MODEL, TrainConfig(epochs=5, batch_size=32, lr=1e6, momentum=0.9, seed=0), data_root, tmp_path)
    assert res["diverged"] and res["diverged_epoch"] is not None
    assert res["history"][-1]["diverged"]
    for e in res["checkpoints"]:
        ckpt = load_checkpoint(checkpoint_path(tmp_path, e))
        assert all(torch.isfinite(v).all() for v in ckpt["model_state"].values())
    assert max(res["checkpoints"]) < res["diverged_epoch"]


class _Exploit:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PWNED'], 'w').write('ran')",))


def test_checkpoint_with_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED", str(marker))
    path = tmp_path / "epoch_001.pt"
    torch.save({"format": "landscape.checkpoint/1", "epoch": 1, "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused or unreadable") as exc:
        load_checkpoint(path)
    assert "exec" in str(exc.value) or "global" in str(exc.value).lower()  # refused for the unsafe global
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the same file, unpickled without the guard, does run code
    assert marker.read_text() == "ran"


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.glob("epoch_*.pt"))}


@pytest.mark.parametrize(("first", "second"), [
    ({"epochs": 4, "checkpoint_every": 1}, {"epochs": 4, "checkpoint_every": 2}),  # 1 -> 2: drop 1 and 3
    ({"epochs": 4, "checkpoint_every": 2}, {"epochs": 4, "checkpoint_every": 1}),  # 2 -> 1: produce 1 and 3
    ({"epochs": 5, "checkpoint_every": 2}, {"epochs": 6, "checkpoint_every": 2}),  # 5 was the last, not now
    ({"epochs": 4, "checkpoint_every": 1}, {"epochs": 2, "checkpoint_every": 1}),  # fewer epochs
    ({"epochs": 2, "checkpoint_every": 1}, {"epochs": 5, "checkpoint_every": 3}),  # extend and re-space
])
def test_an_incremental_run_equals_a_fresh_run(tmp_path, data_root, first, second):
    """Rule: after any edit of epochs / checkpoint_every, the checkpoints and the history are exactly those
    of a fresh run with the new params (nothing stale survives, nothing missing is skipped)."""
    incremental, fresh = tmp_path / "incremental", tmp_path / "fresh"
    train(MODEL, TrainConfig(**TRAIN, **first), data_root, incremental)
    cfg = TrainConfig(**TRAIN, **second)
    got = train(MODEL, cfg, data_root, incremental)
    want = train(MODEL, cfg, data_root, fresh)
    assert sorted(list_checkpoints(incremental)) == cfg.saved_epochs() == got["checkpoints"]
    assert _files(incremental) == _files(fresh)
    strip = [{k: v for k, v in h.items() if k != "wall_time_s"} for h in want["history"]]
    assert [{k: v for k, v in h.items() if k != "wall_time_s"} for h in got["history"]] == strip


def test_raising_epochs_after_a_divergence_equals_a_fresh_run(tmp_path, data_root):
    cfg = {**TRAIN, "lr": 320.0, "momentum": 0.9}  # diverges in epoch 4 (measured)
    first = train(MODEL, TrainConfig(**cfg, epochs=2), data_root, tmp_path / "a")
    longer = TrainConfig(**cfg, epochs=6)
    got = train(MODEL, longer, data_root, tmp_path / "a")
    want = train(MODEL, longer, data_root, tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert (got["diverged"], got["diverged_epoch"]) == (want["diverged"], want["diverged_epoch"])
    assert want["diverged"] and not first["diverged"], "lr must make the longer run diverge after epoch 2"


def test_no_resume_trains_from_scratch_with_the_same_bytes(tmp_path, data_root, caplog):
    caplog.set_level("INFO")
    cfg = TrainConfig(**TRAIN, epochs=2)
    first = train(MODEL, cfg, data_root, tmp_path)
    before = _files(tmp_path)
    again = train(MODEL, cfg, data_root, tmp_path, resume=False)
    assert again["resumed_from"] is None and first["resumed_from"] is None
    assert "training from scratch" in caplog.text
    assert _files(tmp_path) == before
    assert again["history"][0]["wall_time_s"] != first["history"][0]["wall_time_s"]  # really trained again


def test_temp_files_of_a_killed_write_are_removed(tmp_path, data_root):
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / ".epoch_002.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(MODEL, TrainConfig(**TRAIN, epochs=1), data_root, tmp_path)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".wall_times.json", "epoch_000.pt", "epoch_001.pt"]
