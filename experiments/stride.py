r"""Stride ablation: conv stride 1, 2, 3 in every block (stride n + 1 skips n locations and shrinks the map).

  python launch.py --experiment=stride --workdir=/tmp/cnnjax/stride

3 points x 5 seeds x 3+ learning rates (picked on validation) x 300 steps. By the closed forms, stride 2 and 3 cut
each conv's FLOPs ~4x and ~9x and shrink the dense layer with them. Measured results: docs/studies.md.
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'model.stride': s} for s in (1, 2, 3)]
