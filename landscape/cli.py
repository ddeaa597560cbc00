"""The ``landscape`` console command, for what is not a DVC stage.

    landscape sweep GRID.yaml [--jobs N] [--dry-run]     run a grid of params edits as DVC experiments
    landscape analyze --experiment NAME [--out DIR]      geometry against generalization across its runs
    landscape analyze --from-json OLD/analysis.json      the same statistics on the runs an earlier report recorded
    landscape ui [--port 5000] [--host 127.0.0.1]        MLflow UI on the pipeline's store (the runs page)

Errors end in one line on stderr and a non-zero exit: 2 for bad input or an unusable environment (found before
any work), 1 when the work failed, 130 after Ctrl-C (saying what keeps running).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from landscape import runtime  # noqa: F401 - sets the offline environment first


def _root() -> Path:
    """The repository root; the commands refuse to run elsewhere (a subdirectory has no params.yaml, and the
    default store ``mlflow.db`` would silently be a new, empty one there)."""
    import subprocess

    from landscape.errors import InputError

    here = Path.cwd().resolve()
    out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    top = Path(out.stdout.strip()).resolve() if out.returncode == 0 else None
    if top is None or not (top / "dvc.yaml").is_file():
        raise InputError(f"{here} is not inside a clone of the landscape repository; allowed: its root")
    if top != here:
        raise InputError(f"run landscape from the repository root {top}, not {here}")
    return top


def _ui(args: argparse.Namespace) -> int:
    from landscape.config import ConfigError
    from landscape.params_file import load_params
    from landscape.tracking import runs_page_url, tracking_uri, ui_experiment_id

    root = _root()
    try:
        experiment = args.experiment or load_params().track.experiment
    except ConfigError:
        experiment = "landscape"
    uri = tracking_uri(root)
    base = f"http://{args.host}:{args.port}"
    exp_id = ui_experiment_id(uri, experiment)
    if exp_id is None:
        print(f"MLflow UI at {base} (no experiment '{experiment}' in {uri} yet: run `dvc repro` first)")
    else:
        print(f"MLflow UI: experiment '{experiment}', runs page {runs_page_url(base, exp_id)}", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port)]
    os.execvp(cmd[0], cmd)
    return 0  # not reached


def _sweep(args: argparse.Namespace) -> int:
    from landscape.runner.grid import load_grid

    root = _root()
    grid = load_grid(args.grid, root / "params.yaml")
    print(f"sweep {grid.name}: {len(grid.points)} points over {', '.join(grid.axes)} -> MLflow experiment "
          f"'{grid.experiment}'")
    if args.dry_run:
        for p in grid.points:
            print(f"  {p.name}: {p.label()}")
        return 0
    if args.engine == "ray":
        from landscape.runner.ray_engine import run_ray

        result = run_ray(grid, root, args.address, args.remote, args.dvc_remote)
    else:
        from landscape.runner.sweep import run_local

        result = run_local(grid, root, jobs=args.jobs)
    from landscape.runner.sweep import report

    print(report(result))
    return 1 if result.failed else 0


def _analyze(args: argparse.Namespace) -> int:
    from landscape.study.analysis import analyze, reanalyze

    _root()
    if args.from_json:
        out = Path(args.out or Path(args.from_json).parent)
        record = reanalyze(Path(args.from_json), out, resamples=args.resamples, seed=args.seed)
        print(f"re-analysis of the {len(record['runs'])} runs in {args.from_json} -> {out}/report.md")
        return 0
    if not args.experiment:
        from landscape.errors import InputError

        raise InputError("analyze needs --experiment NAME (or --from-json ANALYSIS.json)")
    out = Path(args.out or f"reports/study/{args.experiment}")
    record = analyze(args.experiment, out, resamples=args.resamples, seed=args.seed, log_run=not args.no_log,
                     min_train_accuracy=args.min_train_accuracy)
    print(f"analysis of {len(record['runs'])} runs ({len(record['skipped'])} skipped) -> {out}/report.md"
          + (f"; MLflow run {record['analysis_run_id']}" if "analysis_run_id" in record else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="landscape", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sw = sub.add_parser("sweep", help="run a grid of params edits as DVC experiments, one MLflow run each")
    sw.add_argument("grid", help="the grid YAML (see sweeps/)")
    sw.add_argument("--jobs", "-j", type=int, default=1, help="local workers (dvc queue start -j N)")
    sw.add_argument("--dry-run", action="store_true", help="print the points and stop")
    sw.add_argument("--engine", choices=("local", "ray"), default="local")
    sw.add_argument("--address", help="ray: the cluster head, HOST:PORT")
    sw.add_argument("--remote", default="origin", help="ray: the git remote every worker clones from")
    sw.add_argument("--dvc-remote", help="ray: the DVC remote experiments are pushed to")
    sw.set_defaults(func=_sweep)
    an = sub.add_parser("analyze", help="Kendall τ and Ψ of geometry against the generalization gap")
    an.add_argument("--experiment", help="the MLflow experiment (a sweep's 'experiment')")
    an.add_argument("--from-json", help="recompute the statistics on the runs an earlier analysis.json recorded")
    an.add_argument("--out", help="output directory (default reports/study/<experiment>)")
    an.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of runs")
    an.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    an.add_argument("--no-log", action="store_true", help="do not log the analysis as an MLflow run")
    an.add_argument("--min-train-accuracy", type=float, help="skip runs that fit the training set less well")
    an.set_defaults(func=_analyze)
    ui = sub.add_parser("ui", help="MLflow UI on the pipeline's store; prints the experiment's runs page")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--experiment", help="experiment whose runs page to print (default track.experiment)")
    ui.set_defaults(func=_ui)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[landscape] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # retries of an unreachable store: the error says it
    from landscape.config import ConfigError
    from landscape.errors import LandscapeError

    from landscape.errors import InputError
    from landscape.runner.sweep import SweepInterrupted

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SweepInterrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LandscapeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
