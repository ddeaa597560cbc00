"""Stage download: acquire the dataset per ``data.source`` and write data/{train,test}.pt + dataset.json."""

from landscape import cli  # first: sets the thread/offline environment
from landscape.config import load_params


def main() -> None:
    cfg = load_params().data  # validate before importing torch or touching any file

    from pathlib import Path

    from landscape.data import acquire, prepare

    raw = acquire(cfg.dataset, cfg.source, cfg.seed, cfg.download_timeout)
    record = prepare(raw, Path("data"), cfg.train_samples, cfg.test_samples, cfg.seed)
    print(f"data: {record['dataset']} from {record['source_used']}: "
          f"{record['train']['count']} train / {record['test']['count']} test examples -> data/")


if __name__ == "__main__":
    cli.run_stage("download", main)
