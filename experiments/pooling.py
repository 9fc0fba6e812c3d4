r"""Pooling ablation: 2x2 max vs average vs no pooling, and a stride-2 conv in place of pooling.

  python launch.py --experiment=pooling --workdir=/tmp/cnnjax/pooling

Runtime: about 5 minutes on 2 CPU cores. Expected: no pooling keeps full resolution, so it has ~16x the dense
parameters and ~4x the FLOPs of max/avg pooling; max and avg pooling reach similar accuracy; the report adds
accuracy and prediction agreement under input shifts of 0..4 pixels.
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
