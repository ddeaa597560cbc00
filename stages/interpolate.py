"""Stage interpolate: loss along θ(α) = (1−α)θ_a + αθ_b -> line_loss.json and reports/line_summary.json."""

from landscape import cli  # first: sets the thread/offline environment
from landscape.config import load_params


def main() -> None:
    params = load_params()  # validate before importing torch or touching any file

    from landscape.interpolation import alpha_grid, interpolate_checkpoints, resolve_endpoints
    from landscape.io import write_json

    cfg = params.interpolate
    start, end, note = resolve_endpoints("checkpoints", cfg.start_epoch, params.resolved_end_epoch())
    if start == end:  # training diverged before a second finite checkpoint existed
        rows, summary = [], {"start_epoch": start, "end_epoch": end, "skipped": note}
    else:
        alphas = alpha_grid(cfg.points, cfg.alpha_min, cfg.alpha_max)
        rows, summary = interpolate_checkpoints("checkpoints", "data", start, end, alphas,
                                                params.probe.eval_batch_size)
        if note:
            summary["note"] = note
    write_json("line_loss.json", rows)
    write_json("reports/line_summary.json", summary)
    print(f"interpolate: epoch {start} -> {end}, {len(rows)} points, "
          f"barrier height {summary.get('barrier_height', 'n/a')}")


if __name__ == "__main__":
    cli.run_stage("interpolate", main)
