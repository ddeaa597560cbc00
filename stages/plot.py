"""Stage plot: the standard figures -> plots/*.png."""

from landscape import cli  # first: sets the thread/offline environment
from landscape.config import load_params


def main() -> None:
    cfg = load_params().plot  # validate before importing matplotlib or touching any file

    from pathlib import Path

    from landscape.io import read_json
    from landscape.plotting import make_figures

    paths = make_figures(
        read_json("mnist_geometry_metrics.json"),
        read_json("line_loss.json"),
        read_json("reports/line_summary.json"),
        read_json("reports/spectrum.json"),
        read_json("reports/train_history.json"),
        cfg,
        Path("plots"),
    )
    print(f"plot: {len(paths)} figures -> plots/")


if __name__ == "__main__":
    cli.run_stage("plot", main)
