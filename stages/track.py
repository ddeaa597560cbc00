"""Stage track: record this pipeline state as one MLflow parent run -> reports/mlflow_run.json."""

from landscape import runtime  # first: sets the thread/offline environment
from landscape import stage_inputs

FILES = {
    "metrics": "mnist_geometry_metrics.json",
    "line": "line_loss.json",
    "line_summary": "reports/line_summary.json",
    "probe_summary": "reports/probe_summary.json",
    "history": "reports/train_history.json",
    "dataset": "data/dataset.json",
    "probe_indices": "reports/probe_indices.json",
    "spectrum": "reports/spectrum.json",
    "stability": "reports/stability.json",
    "surface": "reports/surface.json",
    "surface_summary": "reports/surface_summary.json",
    "connectivity": "reports/connectivity.json",
    "connect_summary": "reports/connect_summary.json",
    "measures": "reports/measures.json",
    "params": "params.yaml",
}
TIMED_STAGES = ("download", "train", "probe", "interpolate", "surface", "connect", "measures", "plot")


def main() -> None:
    inputs = stage_inputs.load("track")  # validate before importing mlflow or touching any file

    from pathlib import Path

    from landscape.config import Params
    from landscape.params_file import flatten
    from landscape.io import read_json, write_json
    from landscape.plotting import FIGURES
    from landscape.tracking import log_pipeline

    timings = {s: read_json(runtime.TIMINGS_DIR / f"{s}.json") for s in TIMED_STAGES
               if (runtime.TIMINGS_DIR / f"{s}.json").exists()}
    run = log_pipeline(
        inputs.flat_params,
        flatten(Params()),
        inputs.experiment,
        inputs.run_name,
        Path.cwd(),
        {k: Path(v) for k, v in FILES.items()},
        [Path("plots") / f"{name}.png" for name in FIGURES],
        timings,
    )
    url = run.pop("url", None)  # printed, not written: the file names the run, not a machine
    write_json("reports/mlflow_run.json", run)
    data = read_json("data/dataset.json")
    print(f"track: MLflow run {run['run_id']} '{run['run_name']}' ({'reused' if run['reused'] else 'new'}) "
          f"in {run['store']}; data: {data['dataset']} from {data['source_used']} "
          f"({data['train']['count']} train / {data['test']['count']} test)" + (f"; {url}" if url else ""))


if __name__ == "__main__":
    runtime.run_stage("track", main, timing=False)
