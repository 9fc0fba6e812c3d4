r"""Pooling on Fashion-MNIST: 2x2 max vs average vs no pooling, and a stride-2 conv in place of pooling.

  python launch.py --experiment=fashion_mnist_pooling --workdir=/tmp/cnnjax/fm_pooling \
      --out=results/experiments/fashion_mnist_pooling.json

4 points x 5 seeds at the studies' budget (experiments/_fashion_mnist_study.py), each compared with max pooling
seed by seed; the report adds accuracy and agreement under input shifts of 0..4 pixels. It shows whether
pooling's choice changes converged test accuracy on this data; the quick offline version is `pooling`.
"""

import ml_collections

from experiments import _fashion_mnist_study, pooling

get_sweep = pooling.get_sweep


def get_config() -> ml_collections.ConfigDict:
  config = _fashion_mnist_study.get_config()
  config.analysis.invariance_shifts = 4
  return config
