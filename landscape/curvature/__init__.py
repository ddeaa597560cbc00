"""Everything built on Hessian-vector products of the probe-set loss.

``hvp`` (the operator), ``eigenvalues`` (Lanczos, power iteration), ``trace`` (Hutchinson, Hutch++),
``density`` (stochastic Lanczos quadrature).
"""
