"""The ``landscape`` console command, for what is not a DVC stage.

    landscape ui [--port 5000] [--host 127.0.0.1]   MLflow UI on the pipeline's store; prints the runs page
"""

from __future__ import annotations

import argparse
import os
import sys

from landscape import runtime  # noqa: F401 - sets the offline environment first


def _ui(args: argparse.Namespace) -> int:
    from landscape.config import ConfigError, load_params
    from landscape.tracking import repo_root, runs_page_url, tracking_uri, ui_experiment_id

    try:
        experiment = load_params().track.experiment
    except ConfigError:
        experiment = "landscape"
    uri = tracking_uri(repo_root())
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="landscape", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ui = sub.add_parser("ui", help="MLflow UI on the pipeline's store; prints the experiment's runs page")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1")
    ui.set_defaults(func=_ui)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
