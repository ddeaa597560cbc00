"""Stage probe: geometry of every probed checkpoint -> mnist_geometry_metrics.json (+ summary, probe indices)."""

from landscape import cli  # first: sets the thread/offline environment
from landscape.config import ConfigError, load_params


def main() -> None:
    params = load_params()  # validate before importing torch or touching any file

    from landscape.data import load_split
    from landscape.geometry import probe_checkpoints, summarize
    from landscape.io import write_json

    n_train = len(load_split("data", "train")[1])
    if params.probe.samples > n_train:
        raise ConfigError(
            f"params.yaml: probe.samples = {params.probe.samples} exceeds the training split "
            f"({n_train} examples); allowed: 1..{n_train}",
            key="probe.samples",
        )
    records, probe_set, spectra = probe_checkpoints(
        params.probed_epochs(), "data", "checkpoints", params.probe, params.density_epochs()
    )
    write_json("reports/probe_indices.json", probe_set)
    write_json("reports/spectrum.json", spectra)
    write_json("mnist_geometry_metrics.json", records)
    write_json("reports/probe_summary.json", summarize(records))
    print(f"probe: {sum(not r['diverged'] for r in records)} checkpoints probed -> mnist_geometry_metrics.json")


if __name__ == "__main__":
    cli.run_stage("probe", main)
