r"""Conv stride on Fashion-MNIST: stride 1, 2, 3 in both conv blocks (each still followed by 2x2 max pooling).

  python launch.py --experiment=fashion_mnist_stride --workdir=/tmp/cnnjax/fm_stride \
      --records=results/runs/fashion_mnist_stride --out=results/experiments/fashion_mnist_stride.json

3 points x 5 seeds at budgets of 1.5 to 12 epochs (experiments/_fashion_mnist_study.py), each compared with stride 1
seed by seed. It shows what skipping locations costs in converged accuracy against the ~4x and ~9x fewer conv
FLOPs of the closed forms; the quick offline version is `stride`.
"""

from experiments import _fashion_mnist_study, stride

get_config = _fashion_mnist_study.get_config
get_sweep = stride.get_sweep
