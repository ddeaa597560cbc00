"""Stage plot: the standard figures -> plots/*.png."""

from landscape import cli  # first: sets the thread/offline environment

from pathlib import Path

from landscape.config import load_params
from landscape.io import read_json
from landscape.plotting import make_figures


def main() -> None:
    cfg = load_params().plot
    paths = make_figures(
        read_json("mnist_geometry_metrics.json"),
        read_json("line_loss.json"),
        read_json("reports/line_summary.json"),
        cfg,
        Path("plots"),
    )
    print(f"plot: {len(paths)} figures -> plots/")


if __name__ == "__main__":
    cli.run_stage("plot", main)
