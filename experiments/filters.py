r"""Fixed first-layer filters: a learned first layer vs frozen Gaussian, Sobel and Gaussian+Sobel filters.

  python launch.py --experiment=filters --workdir=/tmp/cnnjax/filters

4 points x 5 seeds x 3+ learning rates (picked on validation) x 300 steps. Fixed filters have no first-layer
parameters. Measured results: docs/studies.md.
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'model.first_layer': f} for f in ('learned', 'gaussian', 'sobel', 'gaussian_sobel')]
