"""Stage surface: the 2-D loss surface around a checkpoint -> reports/surface.json (+ surface_summary.json)."""

from landscape import runtime  # first: sets the thread/offline environment
from landscape import stage_inputs


def main() -> None:
    inp = stage_inputs.load("surface")  # validate before importing torch or touching any file

    from landscape.io import write_json

    if not inp.enabled:
        write_json("reports/surface.json", {"enabled": False})
        write_json("reports/surface_summary.json", {"enabled": False})
        print("surface: disabled (surface.enabled: false)")
        return
    from landscape.paths.surface import surface_of_checkpoint, surface_summary

    env = runtime.configure_torch(inp.threads, inp.device)
    record = surface_of_checkpoint("checkpoints", "data", inp, env["device"])
    write_json("reports/surface.json", record)
    summary = surface_summary(record)
    write_json("reports/surface_summary.json", summary)
    plane = record.get("plane") or {}
    defined = (f": {plane['explained_variance'][0]:.1%} + {plane['explained_variance'][1]:.1%} of the path's variance"
               if plane.get("kind") == "pca" else
               f": λ₁ = {plane['eigenvalues'][0]:.4g}, λ₂ = {plane['eigenvalues'][1]:.4g}"
               if plane.get("kind") == "hessian" else "")
    print(f"surface: {inp.points}x{inp.points} grid around epoch {record['epoch']} on the {inp.split} split "
          f"({record['samples']} examples, {inp.directions} plane{defined}, {record['evaluation']} evaluation)"
          + (f"; |λ_min/λ_max| > {summary['curvature_threshold']} at {summary['nonconvex_fraction']:.0%} of "
             f"{summary['curvature_points']} points" + (
                 f" (λ_max and λ_min converged at {summary['curvature_converged_fraction']:.0%} of them; elsewhere a "
                 "negative λ_min can be underestimated in size)" if not summary["curvature_all_converged"] else "")
             if "nonconvex_fraction" in summary else "")
          + (f"; {plane['note']}" if plane.get("note") else ""))


if __name__ == "__main__":
    runtime.run_stage("surface", main)
