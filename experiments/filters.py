r"""Fixed first-layer filters: a learned first layer vs frozen Gaussian, Sobel and Gaussian+Sobel filters.

  python launch.py --experiment=filters --workdir=/tmp/cnnjax/filters

Runtime: about 3 minutes on 2 CPU cores. Expected: fixed filters have no first-layer parameters; Sobel edges
keep nearly all the accuracy on shapes, a lone Gaussian blur (one grey channel) loses the most.
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'model.first_layer': f} for f in ('learned', 'gaussian', 'sobel', 'gaussian_sobel')]
