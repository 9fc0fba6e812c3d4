r"""Task heads on one trunk: multi-class (which shape), binary (is it a square) and regression (its size).

  python launch.py --experiment=heads --workdir=/tmp/cnnjax/heads

3 points x 5 seeds x 3+ learning rates (picked on validation) x 300 steps. Baselines to beat: chance 1/6
(multi-class), 5/6 for always answering "not a square" (binary), and the variance of the size target,
0.2^2/12 = 0.0033 (regression MSE). Measured results: docs/studies.md.
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'head': 'multiclass'}, {'head': 'binary', 'data.positive_class': 0},
          {'head': 'regression', 'data.regression_target': 'size'}]
