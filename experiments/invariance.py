r"""Translational invariance: accuracy and prediction agreement under input shifts of 0..6 pixels, for max,
average and no pooling (with an extra block so that pooling is deep).

  python launch.py --experiment=invariance --workdir=/tmp/cnnjax/invariance

Runtime: about 5 minutes on 2 CPU cores. Expected: see invariance.png; pooled models keep more of their
predictions under small shifts than the unpooled one.
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
