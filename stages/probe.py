"""Stage probe: geometry of every probed checkpoint -> mnist_geometry_metrics.json (+ summary, probe indices)."""

from landscape import runtime  # first: sets the thread/offline environment
from landscape import stage_inputs


def main() -> None:
    inputs = stage_inputs.load("probe")  # validate before importing torch or touching any file

    from landscape.geometry import check_probe_size, probe_checkpoints, summarize
    from landscape.io import write_json
    from landscape.study.stability import stability_summary

    env = runtime.configure_torch(inputs.threads, inputs.device)
    check_probe_size("data", inputs.probe.samples)
    records, probe_set, spectra = probe_checkpoints(inputs.epochs, "data", "checkpoints", inputs.probe,
                                                    inputs.density_epochs, device=env["device"])
    write_json("reports/probe_indices.json", probe_set)
    write_json("reports/spectrum.json", spectra)
    write_json("mnist_geometry_metrics.json", records)
    write_json("reports/probe_summary.json", summarize(records))
    write_json("reports/stability.json", stability_summary(records))
    print(f"probe: {sum(not r['diverged'] for r in records)} checkpoints probed -> mnist_geometry_metrics.json")


if __name__ == "__main__":
    runtime.run_stage("probe", main)
