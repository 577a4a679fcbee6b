"""``diffcls-fast tune``: fit a model's timestep band, pruning schedule and calibration on labelled images.

1. :mod:`.tables` scores every class at every point of a timestep grid for the tuning images (the engine's
   exhaustive policy, resumable in parts): one table ``[images, classes, grid]`` of errors.
2. :mod:`.replay` replays candidate rules on those tables, offline and exactly for the rule as written on the
   grid: a timestep band and a successive-halving schedule (one round is exhaustive in the band).
3. :mod:`.select` picks the cheapest candidate within a tolerance of the best accuracy, the tolerance chosen by
   cross-validation on the tuning images, and fits the posterior's temperature and floor for it.
4. The rule is written as a small JSON file that ``--policy tuned --tuned FILE`` runs.

Held-out images are never read: ``--split heldout`` is refused.
"""
