"""dvc.yaml must declare every package module a stage runs, or an edit to it would not rerun the stage."""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _landscape_imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "landscape":
            if node.module == "landscape":
                mods |= {a.name for a in node.names}
            else:
                mods.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            mods |= {a.name.split(".")[1] for a in node.names if a.name.startswith("landscape.")}
    return {m for m in mods if (ROOT / "landscape" / f"{m}.py").exists()}


def _closure(start: Path) -> set[str]:
    seen: set[str] = set()
    todo = list(_landscape_imports(start))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += _landscape_imports(ROOT / "landscape" / f"{m}.py")
    return seen


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_modules_it_imports(name):
    deps = set(STAGES[name]["deps"])
    module = STAGES[name]["cmd"].split("-m ")[1].split()[0]
    used = _closure(ROOT / (module.replace(".", "/") + ".py")) - {"cli", "errors", "__init__"}
    missing = sorted(f"landscape/{m}.py" for m in used if not _covered(f"landscape/{m}.py", deps))
    assert not missing, f"stage {name} imports {missing} but dvc.yaml does not list them as deps"


def _covered(path: str, deps: set[str]) -> bool:
    return path in deps or any(path.startswith(d.rstrip("/") + "/") for d in deps)


def test_track_depends_on_all_the_code_its_run_key_hashes():
    # otherwise a code edit that leaves the outputs identical would leave MLflow's newest run tagged with
    # the old code (tests/test_pipeline.py checks the rerun itself)
    from landscape.tracking import CODE_GLOBS

    deps = set(STAGES["track"]["deps"])
    files = sorted({p.relative_to(ROOT).as_posix() for g in CODE_GLOBS for p in ROOT.glob(g)})
    assert files and not [f for f in files if not _covered(f, deps)]
