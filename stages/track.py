"""Stage track: record this pipeline state as one MLflow parent run -> reports/mlflow_run.json."""

from landscape import cli  # first: sets the thread/offline environment
from landscape.config import flatten, load_params

FILES = {
    "metrics": "mnist_geometry_metrics.json",
    "line": "line_loss.json",
    "line_summary": "reports/line_summary.json",
    "probe_summary": "reports/probe_summary.json",
    "history": "reports/train_history.json",
    "dataset": "data/dataset.json",
    "probe_indices": "reports/probe_indices.json",
    "spectrum": "reports/spectrum.json",
    "params": "params.yaml",
}


def main() -> None:
    params = load_params()  # validate before importing mlflow or touching any file

    from pathlib import Path

    from landscape.io import write_json
    from landscape.plotting import FIGURES
    from landscape.tracking import log_pipeline

    run = log_pipeline(
        flatten(params),
        params.track.experiment,
        params.track.run_name,
        Path.cwd(),
        {k: Path(v) for k, v in FILES.items()},
        [Path("plots") / f"{name}.png" for name in FIGURES],
    )
    write_json("reports/mlflow_run.json", run)
    print(f"track: MLflow run {run['run_id']} ({'reused' if run['reused'] else 'new'}) at {run['tracking_uri']}")


if __name__ == "__main__":
    cli.run_stage("track", main)
