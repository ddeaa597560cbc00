"""Stage interpolate: loss along θ(α) = (1−α)θ_a + αθ_b -> line_loss.json and reports/line_summary.json."""

from landscape import cli  # first: sets the thread/offline environment

from landscape.checkpoints import list_checkpoints
from landscape.config import load_params
from landscape.interpolation import alpha_grid, interpolate_checkpoints
from landscape.io import write_json


def main() -> None:
    params = load_params()
    cfg = params.interpolate
    start, end = cfg.start_epoch, params.resolved_end_epoch()
    available = list_checkpoints("checkpoints")
    for key, epoch in (("start_epoch", start), ("end_epoch", end)):
        if epoch not in available:
            raise cli.StageError(
                f"interpolate.{key} = {epoch}: no checkpoint for that epoch (training diverged or was not run); "
                f"allowed: one of {sorted(available)}"
            )
    alphas = alpha_grid(cfg.points, cfg.alpha_min, cfg.alpha_max)
    rows, summary = interpolate_checkpoints("checkpoints", "data", start, end, alphas, params.probe.eval_batch_size)
    write_json("line_loss.json", rows)
    write_json("reports/line_summary.json", summary)
    print(f"interpolate: epoch {start} -> {end}, {len(rows)} points, barrier height {summary['barrier_height']:.4g}")


if __name__ == "__main__":
    cli.run_stage("interpolate", main)
