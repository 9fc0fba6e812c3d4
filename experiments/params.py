r"""Parameter counts: conv stacks of three sizes vs dense networks with the same input and output sizes.

  python launch.py --experiment=params --workdir=/tmp/cnnjax/params
  python launch.py --experiment=params --analyze      # per-layer params, FLOPs, dense-equivalent counts

5 points x 5 seeds x 3+ learning rates (picked on validation) x 300 steps. By the closed forms, a dense layer on
32x32x3 inputs has 3,072 weights per unit, so mlp256 has 788,230 parameters against 8,718 for the tiny CNN.
Measured results: docs/studies.md.
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'model.variant': 'tiny'}, {'model.variant': 'small'}, {'model.variant': 'base'},
          {'name': 'mlp64', 'model.variant': 'mlp', 'model.dense': (64,)},
          {'name': 'mlp256', 'model.variant': 'mlp', 'model.dense': (256,)}]
