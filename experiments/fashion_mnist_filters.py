r"""Fixed first-layer filters on Fashion-MNIST: a learned first layer vs frozen Gaussian, Sobel and Gaussian+Sobel.

  python launch.py --experiment=fashion_mnist_filters --workdir=/tmp/cnnjax/fm_filters \
      --records=results/runs/fashion_mnist_filters --out=results/experiments/fashion_mnist_filters.json

4 points x 5 seeds at budgets of 1.5 to 12 epochs (experiments/_fashion_mnist_study.py), each compared with the learned
first layer seed by seed. It shows what freezing the first layer to classic filters costs at a converged budget;
the quick offline version is `filters`.
"""

from experiments import _fashion_mnist_study, filters

get_config = _fashion_mnist_study.get_config
get_sweep = filters.get_sweep
