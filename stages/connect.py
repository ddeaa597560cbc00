"""Stage connect: linear mode connectivity of two copies from a shared start -> reports/connectivity.json."""

from landscape import runtime  # first: sets the thread/offline environment
from landscape import stage_inputs


def main() -> None:
    inp = stage_inputs.load("connect")  # validate before importing torch or touching any file

    from landscape.io import write_json

    if not inp.enabled:
        write_json("reports/connectivity.json", {"enabled": False})
        write_json("reports/connect_summary.json", {"enabled": False})
        print("connect: disabled (connect.enabled: false)")
        return
    from landscape.paths.connectivity import connectivity, summary_metrics

    env = runtime.configure_torch(inp.train.threads, inp.train.device)
    record = connectivity("checkpoints", "data", inp.spawn_epoch, inp.data_seed, inp.points, inp.train,
                          inp.eval_batch_size, inp.curve, inp.curve_epochs, env["device"])
    write_json("reports/connectivity.json", record)
    write_json("reports/connect_summary.json", summary_metrics(record))
    print(f"connect: copies from epoch {inp.spawn_epoch} (data seeds {inp.train.seed} and {inp.data_seed}): "
          + (record["skipped"] if "skipped" in record else
             f"loss barrier {record['loss_barrier']:.4g}, test-error barrier {record['error_barrier']:.4g}"))


if __name__ == "__main__":
    runtime.run_stage("connect", main)
