"""Statistics across runs: the stability trajectory of one run, and the cross-run analysis of geometry against
generalization (Kendall τ_b with cluster-bootstrap intervals, Jiang et al.'s granulated Ψ), with its figures.
Running the runs is :mod:`landscape.runner`."""
