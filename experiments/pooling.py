r"""Pooling ablation: 2x2 max vs average vs no pooling, and a stride-2 conv in place of pooling.

  python launch.py --experiment=pooling --workdir=/tmp/cnnjax/pooling

Runtime: 112-219 s measured on 2 CPU cores (the machine's speed drifts), jax 0.10.2, default XLA flags.
Measured before the validation split existed (1 seed, trained on all 10,000 images): test accuracy max 0.9585, avg
0.7655, none 0.1575 (15x the parameters, near chance at this learning rate), stride-2 conv 0.7515; the report adds
accuracy and prediction agreement under input shifts of 0..4 pixels (agreement at 4 px: max 0.82, avg 0.60, stride-2
conv 0.57).
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
