r"""Stride ablation: conv stride 1, 2, 3 in every block (stride n + 1 skips n locations and shrinks the map).

  python launch.py --experiment=stride --workdir=/tmp/cnnjax/stride

Runtime: about 3 minutes on 2 CPU cores. Expected: stride 2 and 3 cut FLOPs ~4x and ~9x per block and the
dense layer's parameters with them; test accuracy falls as the stride grows.
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'model.stride': s} for s in (1, 2, 3)]
