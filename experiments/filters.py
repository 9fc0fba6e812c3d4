r"""Fixed first-layer filters: a learned first layer vs frozen Gaussian, Sobel and Gaussian+Sobel filters.

  python launch.py --experiment=filters --workdir=/tmp/cnnjax/filters

4 points x 300 steps: 68-99 s measured on 2 CPU cores (the machine's speed drifts), jax 0.10.2, default XLA flags.
Measured before the validation split existed (1 seed, trained on all 10,000 images): test accuracy learned 0.9585,
Gaussian 0.7205, Sobel 0.943, Gaussian+Sobel 0.949. Fixed filters have no first-layer parameters.
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'model.first_layer': f} for f in ('learned', 'gaussian', 'sobel', 'gaussian_sobel')]
