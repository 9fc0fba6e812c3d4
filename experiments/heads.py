r"""Task heads on one trunk: multi-class (which shape), binary (is it a square) and regression (its size).

  python launch.py --experiment=heads --workdir=/tmp/cnnjax/heads

Runtime: about 3 minutes on 2 CPU cores. Expected: multi-class and binary accuracy well above chance (1/6,
and 5/6 for always answering "not a square"); regression MSE far below the target variance (about 0.0033).
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'head': 'multiclass'}, {'head': 'binary', 'data.positive_class': 0},
          {'head': 'regression', 'data.regression_target': 'size'}]
