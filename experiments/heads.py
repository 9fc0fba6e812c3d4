r"""Task heads on one trunk: multi-class (which shape), binary (is it a square) and regression (its size).

  python launch.py --experiment=heads --workdir=/tmp/cnnjax/heads

3 points x 300 steps: 77-124 s measured on 2 CPU cores (the machine's speed drifts), jax 0.10.2, default XLA flags.
Measured before the validation split existed (1 seed, trained on all 10,000 images): multi-class accuracy 0.9585,
binary accuracy 0.999, regression MSE 0.00144 (MAE 0.031). Baselines to beat: chance 1/6 (multi-class), 5/6 for
always answering "not a square" (binary), and the variance of the size target, 0.2^2/12 = 0.0033 (regression MSE).
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'head': 'multiclass'}, {'head': 'binary', 'data.positive_class': 0},
          {'head': 'regression', 'data.regression_target': 'size'}]
