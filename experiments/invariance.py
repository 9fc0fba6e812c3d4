r"""Translational invariance: accuracy and prediction agreement under input shifts of 0..6 pixels, for max,
average and no pooling (with an extra block so that pooling is deep).

  python launch.py --experiment=invariance --workdir=/tmp/cnnjax/invariance

3 points x 300 steps: 138-218 s measured on 2 CPU cores (the machine's speed drifts), jax 0.10.2, default XLA
flags. Measured before the validation split existed (1 seed, trained on all 10,000 images): test accuracy max 0.981,
avg 0.8015, none 0.9775; prediction agreement at a 6-pixel shift: max 0.726, avg 0.535, none 0.705. See
invariance.png in the report.
"""

import ml_collections

from experiments import _ablation


def get_config() -> ml_collections.ConfigDict:
  config = _ablation.get_config()
  config.model.features = (16, 32, 32)
  config.analysis.invariance_shifts = 6
  return config


def get_sweep() -> list[dict]:
  return [{'model.pool': p} for p in ('max', 'avg', 'none')]
