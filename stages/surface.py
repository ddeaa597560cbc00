"""Stage surface: the 2-D loss surface around a checkpoint -> reports/surface.json."""

from landscape import runtime  # first: sets the thread/offline environment
from landscape import stage_inputs


def main() -> None:
    inp = stage_inputs.load("surface")  # validate before importing torch or touching any file

    from landscape.io import write_json

    if not inp.enabled:
        write_json("reports/surface.json", {"enabled": False})
        print("surface: disabled (surface.enabled: false)")
        return
    from landscape.paths.surface import surface_of_checkpoint

    env = runtime.configure_torch(inp.threads, inp.device)
    record = surface_of_checkpoint("checkpoints", "data", inp, env["device"])
    write_json("reports/surface.json", record)
    print(f"surface: {inp.points}x{inp.points} grid around epoch {record['epoch']} on the {inp.split} split "
          f"({record['samples']} examples, {inp.normalization} normalization) -> reports/surface.json")


if __name__ == "__main__":
    runtime.run_stage("surface", main)
