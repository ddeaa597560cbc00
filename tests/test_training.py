"""Training: determinism, resume equivalence, divergence as data, safe checkpoint loading."""

import shutil

import pytest
import torch

from landscape.checkpoints import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint, load_model
from landscape.config import ModelConfig, TrainConfig
from landscape.data import offline_mnist, prepare
from landscape.training import train

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
    assert resumed["history"][0]["wall_time_s"] is None  # epoch 1 came from the checkpoint
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
