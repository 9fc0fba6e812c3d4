r"""Pooling on Fashion-MNIST: 2x2 max vs average vs no pooling, and a stride-2 conv in place of pooling, at
budgets of 1.5, 3, 6 and 12 epochs.

  python launch.py --experiment=fashion_mnist_pooling --workdir=/tmp/cnnjax/fm_pooling \
      --records=results/runs/fashion_mnist_pooling --out=results/experiments/fashion_mnist_pooling.json

4 points x 5 seeds, each seed one 12-epoch warmup-stable-decay run whose cooldowns branched at 1.5, 3 and 6
epochs give the shorter budgets (experiments/_fashion_mnist_study.py); the learning rate is picked at each
budget on the mean validation accuracy over the seeds. Each point is compared with max pooling seed by seed at
every budget (Holm over points x budgets), so the report shows whether pooling's verdict holds as training gets
longer; it adds accuracy and agreement under input shifts of 0..4 pixels. The quick offline version is `pooling`.
"""

import ml_collections

from experiments import _fashion_mnist_study, pooling

get_sweep = pooling.get_sweep


def get_config() -> ml_collections.ConfigDict:
  config = _fashion_mnist_study.get_config()
  config.analysis.invariance_shifts = 4
  return config
