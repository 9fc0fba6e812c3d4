r"""Pooling ablation: 2x2 max vs average vs no pooling, and a stride-2 conv in place of pooling.

  python launch.py --experiment=pooling --workdir=/tmp/cnnjax/pooling
  python launch.py --experiment=pooling --workdir=/tmp/cnnjax/pooling_fm --config.data.name=fashion_mnist

4 points x 5 seeds x 3+ learning rates (picked on validation) x 300 steps; each point is compared with max pooling
seed by seed (paired t, Holm-adjusted), and the report adds accuracy, agreement and correct-both-times under input
shifts of 0..4 pixels.
Measured results and wall times: docs/studies.md.
"""

import ml_collections

from experiments import _ablation


def get_config() -> ml_collections.ConfigDict:
  config = _ablation.get_config()
  config.analysis.invariance_shifts = 4
  return config


def get_sweep() -> list[dict]:
  return [{'model.pool': 'max'}, {'model.pool': 'avg'}, {'model.pool': 'none'},
          {'name': 'conv_stride2', 'model.pool': 'none', 'model.stride': 2}]
