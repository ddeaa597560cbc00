"""Stage measures: generalization measures at the final checkpoint -> reports/measures.json."""

from landscape import runtime  # first: sets the thread/offline environment
from landscape import stage_inputs


def main() -> None:
    inp = stage_inputs.load("measures")  # validate before importing torch or touching any file

    from landscape.io import read_json, write_json

    if not inp.measures.enabled:
        write_json("reports/measures.json", {"enabled": False})
        print("measures: disabled (measures.enabled: false)")
        return
    from landscape.measures.record import measure_run

    env = runtime.configure_torch(inp.threads, inp.device)
    record, timings = measure_run("checkpoints", "data", read_json("reports/train_history.json"), inp.measures,
                                  inp.eval_batch_size, env["device"])
    write_json("reports/measures.json", record)
    if record.get("skipped"):
        print(f"measures: {record['skipped']}")
        return
    v, pct = record["values"], record["norms"]["margin_percentile"]
    print(f"measures: epoch {record['epoch']}: margin {v['margin']:.3g}, log prod spec {v['log_prod_spec']:.3g}"
          + (f", PAC-Bayes 1/σ² {v['pacbayes_flatness']:.3g} (magnitude-aware {v['pacbayes_mag_flatness']:.3g})"
             if "pacbayes_flatness" in v else "")
          + (f", worst-case 1/α² {v['sharpness_flatness']:.3g} (magnitude-aware {v['sharpness_mag_flatness']:.3g})"
             if "sharpness_flatness" in v else "")
          + (f", weightwatcher α {v['ww_alpha']:.3g}" if v.get("ww_alpha") is not None else "")
          + "; seconds: " + ", ".join(f"{k} {t:.1f}" for k, t in timings.items())
          + (f"; at the top of the search interval [0, 2] (the accuracy never fell by the deviation, so these are "
             f"censored there): {', '.join(n for n in record['at_interval_top'] if n.endswith('flatness'))}"
             if record["at_interval_top"] else "")
          + (f"; the {pct:g}th-percentile margin is {v['margin_signed']:.3g} < 0 (at least {pct:g}% of the training "
             "set misclassified): γ is its absolute value, as in Jiang et al.'s code, the size of a wrong margin, so "
             "the measures with γ in them are no margin bounds here" if record["margin_negative"] else ""))


if __name__ == "__main__":
    runtime.run_stage("measures", main)
