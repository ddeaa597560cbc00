"""Stage download: acquire the dataset per ``data.source`` and write data/{train,test}.pt + dataset.json."""

from landscape import runtime  # first: sets the thread/offline environment
from landscape import stage_inputs


def main() -> None:
    cfg = stage_inputs.load("download").data  # validate before importing torch or touching any file

    from pathlib import Path

    from landscape.data import prepare
    from landscape.sources import acquire, describe_source

    raw = acquire(cfg.dataset, cfg.source, cfg.seed, cfg.download_timeout)
    record = prepare(raw, Path("data"), cfg.train_samples, cfg.test_samples, cfg.seed)
    print(f"download: {describe_source(record)} -> data/")


if __name__ == "__main__":
    runtime.run_stage("download", main)
