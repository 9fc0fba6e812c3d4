r"""Parameter counts on Fashion-MNIST: the tiny, small and base CNNs vs one-hidden-layer MLPs of 64 and 256 units.

  python launch.py --experiment=fashion_mnist_params --workdir=/tmp/cnnjax/fm_params \
      --records=results/runs/fashion_mnist_params --out=results/experiments/fashion_mnist_params.json

5 points x 5 seeds at budgets of 1.5 to 12 epochs (experiments/_fashion_mnist_study.py), each compared with the
small CNN (the studies' baseline) seed by seed; the report plots accuracy against parameters and FLOPs. It shows
how accuracy per parameter of conv stacks compares with dense networks on 28x28 inputs; the quick offline version
is `params`.
"""

import ml_collections

from experiments import _fashion_mnist_study, params

get_sweep = params.get_sweep


def get_config() -> ml_collections.ConfigDict:
  config = _fashion_mnist_study.get_config()
  config.baseline_point = 'variant=small'
  return config
