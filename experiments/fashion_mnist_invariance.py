r"""Shift tolerance on Fashion-MNIST: accuracy and prediction agreement under input shifts of 0..6 pixels for max,
average and no pooling, with a third conv block so that pooling is deep.

  python launch.py --experiment=fashion_mnist_invariance --workdir=/tmp/cnnjax/fm_invariance \
      --records=results/runs/fashion_mnist_invariance --out=results/experiments/fashion_mnist_invariance.json

3 points x 5 seeds at budgets of 1.5 to 12 epochs (experiments/_fashion_mnist_study.py). It shows how much of a
prediction survives a shift for each pooling; the quick offline version is `invariance`.
"""

import ml_collections

from experiments import _fashion_mnist_study, invariance


def get_config() -> ml_collections.ConfigDict:
  config = _fashion_mnist_study.get_config()
  config.model.features = invariance.get_config().model.features
  config.analysis.invariance_shifts = 6
  return config


get_sweep = invariance.get_sweep
