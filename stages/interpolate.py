"""Stage interpolate: loss along θ(α) = (1−α)θ_a + αθ_b -> line_loss.json and reports/line_summary.json."""

from landscape import runtime  # first: sets the thread/offline environment
from landscape import stage_inputs


def main() -> None:
    inp = stage_inputs.load("interpolate")  # validate before importing torch or touching any file

    from landscape.io import write_json
    from landscape.paths.line import line_between_checkpoints

    env = runtime.configure_torch(inp.threads, inp.device)
    rows, summary = line_between_checkpoints("checkpoints", "data", inp.start_epoch, inp.end_epoch, inp.points,
                                             inp.alpha_min, inp.alpha_max, inp.eval_batch_size, env["device"])
    write_json("line_loss.json", rows)
    write_json("reports/line_summary.json", summary)
    print(f"interpolate: epoch {summary['start_epoch']} -> {summary['end_epoch']}, {len(rows)} points, "
          f"loss barrier {summary.get('barrier_height', 'n/a')}")


if __name__ == "__main__":
    runtime.run_stage("interpolate", main)
