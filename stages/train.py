"""Stage train: SGD with checkpoints -> checkpoints/epoch_NNN.pt and reports/train_history.json."""

from landscape import cli  # first: sets the thread/offline environment
from landscape.config import load_params


def main() -> None:
    params = load_params()  # validate before importing torch or touching any file

    from pathlib import Path

    from landscape.io import write_json
    from landscape.training import train

    result = train(params.model, params.train, Path("data"), Path("checkpoints"))
    write_json("reports/train_history.json", result)
    state = f"diverged in epoch {result['diverged_epoch']}" if result["diverged"] else "finished"
    print(f"train: {state}; checkpoints for epochs {result['checkpoints']} in checkpoints/")


if __name__ == "__main__":
    cli.run_stage("train", main)
