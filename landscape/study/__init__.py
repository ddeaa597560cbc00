"""Questions across runs: sweep grids and their execution, the stability trajectory of one run, and the
cross-run analysis of geometry against generalization (Kendall τ with bootstrap intervals, granulated Ψ)."""
