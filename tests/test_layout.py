"""dvc.yaml must declare exactly what each stage reads, derived from the code rather than listed by hand:

* params: each stage's resolver (landscape/stage_inputs.py) runs on a recording proxy of several params
  files; the keys it touches must equal the keys dvc.yaml declares for the stage;
* files: tests/test_pipeline.py runs every stage under an audit hook and compares the files it opened
  with the stage's deps and outs (test_stage_file_accesses_match_dvc_yaml).
"""

import ast
import copy
import types
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from landscape import stage_inputs
from landscape.config import GROUPS, Params
from landscape.params_file import parse_params
from tests.pipeline import TINY

ROOT = Path(__file__).resolve().parent.parent
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC["stages"]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())
ALL_KEYS = {f"{g}.{k}" for g, cls in GROUPS.items() for k in cls.model_fields}


class Recorder:
    """Wraps a params object; records every ``group.key`` read through it (methods are rebound to the
    proxy, so reads inside them are recorded too)."""

    def __init__(self, obj, seen: set, prefix: str = "") -> None:
        self._obj, self._seen, self._prefix = obj, seen, prefix

    def __getattr__(self, name):
        cls = type(self._obj)
        attr = getattr(cls, name, None)
        if callable(attr) and not isinstance(attr, type) and name not in getattr(cls, "model_fields", {}):
            return types.MethodType(attr, self)
        value = getattr(self._obj, name)
        if isinstance(value, BaseModel):
            return Recorder(value, self._seen, name)
        self._seen.add(f"{self._prefix}.{name}" if self._prefix else name)
        return value


def variants() -> list[Params]:
    def change(**groups):
        raw = copy.deepcopy(DEFAULT)
        for g, values in groups.items():
            raw.setdefault(g, {}).update(values)
        return parse_params(raw)

    return [
        parse_params(DEFAULT),
        change(**TINY),
        change(interpolate={"end_epoch": 6}, probe={"density_epochs": [0, 4]}),
        change(probe={"density_epochs": "none", "every": 3}, train={"checkpoint_every": 2}),
        change(track={"run_name": "x"}, interpolate={"alpha_min": -0.5, "alpha_max": 1.5}),
        change(surface={"split": "probe", "epoch": 4}, connect={"curve": "bezier", "spawn_epoch": 2}),
        change(surface={"enabled": False}, connect={"enabled": False}),
        change(surface={"directions": "hessian"}),
        change(surface={"curvature": True, "curvature_points": 3}),
        change(surface={"directions": "pca", "split": "test"}),
    ]


def derived_keys(stage: str) -> set[str]:
    seen: set[str] = set()
    for p in variants():
        stage_inputs.RESOLVERS[stage](Recorder(p, seen))
    return seen


def declared_keys(stage: str) -> set[str]:
    out = set()
    for entry in STAGES[stage].get("params", []):
        if isinstance(entry, dict):  # {"params.yaml": None}: every key of the file
            out |= ALL_KEYS
        elif entry in GROUPS:
            out |= {f"{entry}.{k}" for k in GROUPS[entry].model_fields}
        else:
            out.add(entry)
    return out


def test_every_stage_has_a_resolver_and_a_module():
    assert set(stage_inputs.RESOLVERS) == set(STAGES)
    for name, stage in STAGES.items():
        assert stage["cmd"] == f"python -m stages.{name}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_params_declared_exactly(stage):
    derived, declared = derived_keys(stage), declared_keys(stage)
    assert derived, f"the recorder saw no reads for {stage}: the test itself is broken"
    undeclared = sorted(derived - declared)
    assert not undeclared, f"stage {stage} reads {undeclared} but dvc.yaml does not declare them"
    assert not declared - derived, f"dvc.yaml declares {sorted(declared - derived)} for {stage}, which it never reads"


def test_the_recorder_sees_reads_inside_helper_functions():
    # probed_epochs depends on train.epochs/checkpoint_every through saved_epochs: the bug this test guards
    seen: set[str] = set()
    stage_inputs.probe(Recorder(parse_params(DEFAULT), seen))
    assert {"train.epochs", "train.checkpoint_every", "probe.every", "probe.density_epochs"} <= seen


@pytest.mark.parametrize("path", sorted((ROOT / "stages").glob("*.py")), ids=lambda p: p.name)
def test_stages_read_params_only_through_their_resolver(path):
    tree = ast.parse(path.read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "load_params" not in names | imported and "parse_params" not in names | imported, (
        f"{path.name} reads params.yaml directly: use stage_inputs.load(stage)")


def test_training_fingerprint_code_is_declared_for_train():
    from landscape.training import _CODE

    deps = set(STAGES["train"]["deps"])
    assert {f"landscape/{name}" for name in _CODE} <= deps


def test_track_depends_on_all_the_code_its_run_key_hashes():
    # otherwise a code edit that leaves the outputs identical would leave MLflow's newest run tagged with
    # the old code (tests/test_pipeline.py checks the rerun itself)
    from landscape.provenance import code_files

    deps = set(STAGES["track"]["deps"])
    files = code_files(ROOT)
    assert files and not [f for f in files if not covered(f, deps)]


def covered(path: str, entries) -> bool:
    return any(path == e or path.startswith(e.rstrip("/") + "/") for e in entries)


def test_running_runs_and_their_statistics_do_not_import_each_other():
    """landscape/runner (grids, queues, Ray, services) and landscape/study (the statistics of finished runs)
    are independent; only the console command and the stages sit above them."""
    pkg = Path(__file__).resolve().parents[1] / "landscape"
    for folder, other in (("runner", "landscape.study"), ("study", "landscape.runner")):
        for path in sorted((pkg / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n == other or n.startswith(other + ".") for n in names), f"{path.name} imports {other}"
    below = [p for p in pkg.glob("*.py") if p.name not in ("cli.py", "__main__.py")]
    for path in below:
        assert "landscape.runner" not in path.read_text(), f"{path.name} imports the runner"


def test_every_test_the_docs_cite_exists():
    """docs/theory.md and the README name the test behind each claim (`file.py::test_name`, or `::test_name` after
    one): a renamed or deleted test must not leave a citation of nothing behind."""
    import re

    defined = {m.group(1) for f in (ROOT / "tests").glob("test_*.py")
               for m in re.finditer(r"^def (test_\w+)", f.read_text(), re.M)}
    counts = {}
    for doc in ("docs/theory.md", "README.md", "docs/scaling.md"):
        cited = set(re.findall(r"::(test_\w+)", (ROOT / doc).read_text()))
        assert not cited - defined, f"{doc} cites tests that do not exist: {sorted(cited - defined)}"
        counts[doc] = len(cited)
    assert counts["docs/theory.md"] > 50  # the pattern finds the citations (64 when this was written)
