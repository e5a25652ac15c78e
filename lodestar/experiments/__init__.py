"""Experiments: A/B tests of tenant configurations.

* :mod:`~lodestar.experiments.definition`: what an experiment is (variants as overlays on the live
  configuration, placements, layer, traffic, metrics), validated like the tenant configuration.
* :mod:`~lodestar.experiments.assignment`: which variant a user or session sees, a pure function of
  (experiment, unit id).
* :mod:`~lodestar.experiments.statistics`: the tests, intervals, sample-ratio check and power, from
  statsmodels and scipy.
* :mod:`~lodestar.experiments.report`: per variant, from the served-list log and the events that
  carry its recommendation_id (the ``experiment_report`` asset).
"""
