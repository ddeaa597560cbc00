"""Per-run generalization measures at the final finite checkpoint, by family (the ``measures`` stage):

* :mod:`~landscape.measures.norms` — norm and margin based (Jiang et al. 2020 §A);
* :mod:`~landscape.measures.pacbayes` — PAC-Bayes flatness, plain and magnitude-aware (Jiang's ``pacbayes.*``);
* :mod:`~landscape.measures.worst_case` — worst-case flatness, plain and magnitude-aware (Jiang's
  ``sharpness.flatness``, ``sharpness.mag.flatness``): the PAC-Bayes search with a maximum over a box;
* :mod:`~landscape.measures.spectra` — weight spectra by the ``weightwatcher`` package (Martin & Mahoney);
* :mod:`~landscape.measures.optimization` — Jiang's "#steps" from the run's own history.

The Hessian- and sharpness-based measures stay in the probe (every epoch); ``landscape analyze`` ranks all of
them in one table (:mod:`landscape.study.analysis`).
"""
