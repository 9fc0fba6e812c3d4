r"""Stride ablation: conv stride 1, 2, 3 in every block (stride n + 1 skips n locations and shrinks the map).

  python launch.py --experiment=stride --workdir=/tmp/cnnjax/stride

3 points x 300 steps: 54-90 s measured on 2 CPU cores (the machine's speed drifts), jax 0.10.2, default XLA flags.
Measured before the validation split existed (1 seed, trained on all 10,000 images): test accuracy stride 1 0.9585,
stride 2 0.63, stride 3 0.497. By the closed forms, stride 2 and 3 cut each conv's FLOPs ~4x and ~9x and shrink the
dense layer with them.
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'model.stride': s} for s in (1, 2, 3)]
