"""Helpers for end-to-end tests: a temp copy of the project as its own git + DVC repo, tiny params."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "data": {"source": "offline", "train_samples": 400, "test_samples": 200},
    "model": {"hidden": [32]},
    "train": {"epochs": 2, "batch_size": 64},
    "probe": {"samples": 128, "lanczos_iters": 30, "trace_samples": 4, "sharpness_directions": 4,
              "eval_batch_size": 512, "density_runs": 2, "density_steps": 20,
              "top_k": 2, "smallest": True},
    "interpolate": {"start_epoch": 0, "points": 5},
    "surface": {"points": 5},
    "connect": {"points": 5},
}


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    skip = ("tests/", "docs/", "benchmarks/")
    generated = {"dvc.lock", "mnist_geometry_metrics.json", "line_loss.json"}
    return [f for f in out if not f.startswith(skip) and f not in generated and not f.startswith("reports/")
            and (ROOT / f).is_file()]


def make_project(dest: Path, overrides: dict | None = None) -> Path:
    """Copy the project to ``dest``, apply TINY (+ overrides) to params.yaml, git init + commit."""
    for f in project_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    set_params(dest, TINY)
    if overrides:
        set_params(dest, overrides)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "test project"], cwd=dest, check=True)
    return dest


def set_params(dest: Path, changes: dict) -> None:
    p = dest / "params.yaml"
    raw = yaml.safe_load(p.read_text())
    for group, values in changes.items():
        raw.setdefault(group, {}).update(values)
    p.write_text(yaml.safe_dump(raw, sort_keys=False))


def stage_env(**extra: str) -> dict[str, str]:
    """Environment for DVC-run stages: this interpreter's bin first on PATH, nothing from the caller's MLflow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OPENBLAS_NUM_THREADS": "1"})
    env.update(extra)
    return env


def reproduce(project: Path, monkeypatch, **kwargs) -> list[str]:
    """``dvc repro`` through the Python API; returns the names of the stages that ran."""
    from dvc.repo import Repo

    for k, v in stage_env().items():
        monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("MLFLOW_") and k != "MLFLOW_DISABLE_TELEMETRY"]:
        monkeypatch.delenv(k)
    monkeypatch.chdir(project)
    with Repo(str(project)) as repo:
        stages = repo.reproduce(**kwargs)
    return [s.addressing for s in stages]
