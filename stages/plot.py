"""Stage plot: the standard figures -> plots/*.png."""

from landscape import runtime  # first: sets the thread/offline environment
from landscape import stage_inputs


def main() -> None:
    cfg = stage_inputs.load("plot").plot  # validate before importing matplotlib or touching any file

    from pathlib import Path

    from landscape.io import read_json
    from landscape.plotting import data_label, make_figures, path_figures

    dataset = read_json("data/dataset.json")
    paths = make_figures(
        read_json("mnist_geometry_metrics.json"),
        read_json("line_loss.json"),
        read_json("reports/line_summary.json"),
        read_json("reports/spectrum.json"),
        read_json("reports/train_history.json"),
        dataset,
        cfg,
        Path("plots"),
    )
    paths += path_figures(read_json("reports/surface.json"), read_json("reports/connectivity.json"),
                          data_label(dataset), cfg, Path("plots"))
    print(f"plot: {len(paths)} figures -> plots/")


if __name__ == "__main__":
    runtime.run_stage("plot", main)
