"""What identifies a pipeline state must not depend on where the checkout lives."""

import shutil
from pathlib import Path

import yaml

from landscape.provenance import code_digest, code_files, outputs_digest, rerun_of_locked_state

ROOT = Path(__file__).resolve().parent.parent


def _clone(dest: Path) -> Path:
    for part in ("landscape", "stages", "tests"):
        shutil.copytree(ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_code_digest_depends_on_code_not_location(tmp_path):
    a, b = _clone(tmp_path / "a"), _clone(tmp_path / "deeper" / "b")
    assert code_digest(a) == code_digest(b) == code_digest(ROOT)
    assert "landscape/curvature/hvp.py" in code_files(a) and not any(f.startswith("tests/") for f in code_files(a))
    (b / "tests" / "test_provenance.py").write_text("# a change in tests/\n")
    assert code_digest(b) == code_digest(a)
    path = b / "landscape" / "io.py"
    text = path.read_text()
    path.write_text(text.replace("atomically", "atomicaly", 1))  # one character
    assert code_digest(b) != code_digest(a)
    path.write_text(text)
    (b / "landscape" / "paths" / "line.py").rename(b / "landscape" / "paths" / "line2.py")  # a renamed file
    assert code_digest(b) != code_digest(a)


def test_outputs_digest_sees_content_and_absence():
    base = {"a": b"1", "b": b"2"}
    assert outputs_digest(base) == outputs_digest(dict(reversed(base.items())))
    assert outputs_digest(base) != outputs_digest({"a": b"1", "b": b"3"})
    assert outputs_digest(base) != outputs_digest({"a": b"1", "b": None})
    assert outputs_digest({"a": b"12", "b": b""}) != outputs_digest({"a": b"1", "b": b"2"})


def test_rerun_of_locked_state(tmp_path):
    lock = {"stages": {"train": {"params": {"params.yaml": {
        "model": {"hidden": [32], "activation": "relu"}, "train": {"lr": 0.05, "epochs": 2},
        "probe.samples": 128}}}}}
    params = {"model": {"hidden": [32], "activation": "relu"}, "train": {"lr": 0.05, "epochs": 2},
              "probe": {"samples": 128}, "plot": {"dpi": 80}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    check = lambda: rerun_of_locked_state("train", tmp_path / "dvc.lock", tmp_path / "params.yaml")  # noqa: E731
    assert check()  # same params as the last completed run: forced (or outputs edited)
    params["plot"]["dpi"] = 90  # a key train does not read
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert check()
    params["train"]["epochs"] = 4  # a key it reads: a real params edit, resume allowed
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert not check()
    assert not rerun_of_locked_state("probe", tmp_path / "dvc.lock", tmp_path / "params.yaml")
    assert not rerun_of_locked_state("train", tmp_path / "missing.lock", tmp_path / "params.yaml")


def test_locked_floats_written_without_a_dot_still_compare_equal(tmp_path):
    # dvc.lock writes 1e-08 (no dot): PyYAML reads that back as a string
    (tmp_path / "dvc.lock").write_text("stages:\n  train:\n    params:\n      params.yaml:\n        train:\n"
                                       "          adam_eps: 1e-08\n          lr: 0.05\n")
    (tmp_path / "params.yaml").write_text("train:\n  adam_eps: 1.0e-8\n  lr: 0.05\n")
    assert rerun_of_locked_state("train", tmp_path / "dvc.lock", tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train:\n  adam_eps: 1.0e-7\n  lr: 0.05\n")
    assert not rerun_of_locked_state("train", tmp_path / "dvc.lock", tmp_path / "params.yaml")


def test_run_names_qualify_a_key_whose_name_another_group_also_has():
    """``seed=1`` could be the data, train, probe or surface seed; a run name says which (``train.seed=1``) and
    keeps the short name where it is unambiguous (``lr=0.1``)."""
    from landscape.run_metrics import readable_run_name

    defaults = {"train.seed": 0, "data.seed": 0, "train.lr": 0.05, "surface.points": 21, "interpolate.points": 21,
                "track.run_name": None}
    params = {**defaults, "train.seed": 1, "train.lr": 0.1, "surface.points": 5, "track.run_name": None}
    dataset = {"dataset": "mnist", "source_used": "offline", "train": {"count": 400}, "test": {"count": 200}}
    assert readable_run_name(params, defaults, dataset) == \
        "mnist offline 400/200 · train.seed=1 lr=0.1 surface.points=5"
    assert readable_run_name(defaults, defaults, dataset) == "mnist offline 400/200 · defaults"
