r"""Translational invariance: accuracy and prediction agreement under input shifts of 0..6 pixels, for max,
average and no pooling (with an extra block so that pooling is deep).

  python launch.py --experiment=invariance --workdir=/tmp/cnnjax/invariance

3 points x 5 seeds x 3+ learning rates (picked on validation) x 300 steps. The report gives accuracy, agreement
and correct-both-times under each shift (invariance.png). Measured results: docs/studies.md.
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
