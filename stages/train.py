"""Stage train: SGD with checkpoints -> checkpoints/epoch_NNN.pt and reports/train_history.json."""

from landscape import runtime  # first: sets the thread/offline environment
from landscape import stage_inputs


def main() -> None:
    inputs = stage_inputs.load("train")  # validate before importing torch or touching any file

    from pathlib import Path

    from landscape.io import write_json
    from landscape.provenance import rerun_of_locked_state
    from landscape.training import train

    env = runtime.configure_torch(inputs.train.threads, inputs.train.device)
    forced = rerun_of_locked_state("train")
    result = train(inputs.model, inputs.train, Path("data"), Path("checkpoints"), resume=not forced,
                   device=env["device"])
    write_json("reports/train_history.json", {**result, **env})
    state = f"diverged in epoch {result['diverged_epoch']}" if result["diverged"] else "finished"
    finite = [h for h in result["history"] if not h["diverged"]]
    if finite:  # a loss that exploded but stayed finite is not a divergence; the line shows it
        state += f" (mean mini-batch loss of epoch {finite[-1]['epoch']}: {finite[-1]['train_loss']:.4g})"
    print(f"train: {state}; checkpoints for epochs {result['checkpoints']} in checkpoints/ ({env['threads']} threads, "
          f"{env['device']})")


if __name__ == "__main__":
    runtime.run_stage("train", main)
