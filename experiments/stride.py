r"""Stride ablation: conv stride 1, 2, 3 in every block (stride n + 1 skips n locations and shrinks the map).

  python launch.py --experiment=stride --workdir=/tmp/cnnjax/stride

3 points x 300 steps; not yet timed (the 4-point pooling sweep took 6 minutes on 2 CPU cores).
By the closed forms, stride 2 and 3 cut each conv's FLOPs ~4x and ~9x and shrink the dense layer with them.
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'model.stride': s} for s in (1, 2, 3)]
