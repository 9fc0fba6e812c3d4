r"""Parameter counts: conv stacks of three sizes vs dense networks with the same input and output sizes.

  python launch.py --experiment=params --workdir=/tmp/cnnjax/params
  python launch.py --experiment=params --analyze      # per-layer params, FLOPs, dense-equivalent counts

5 points x 300 steps: 110-130 s measured on 2 CPU cores (the machine's speed drifts), jax 0.10.2, default XLA
flags. Measured before the validation split existed (1 seed, trained on all 10,000 images): test accuracy tiny
0.7735, small 0.9585, base 0.99, mlp64 0.477, mlp256 0.513. By the closed forms, a dense layer on 32x32x3 inputs has
3,072 weights per unit, so mlp256 has 788,230 parameters against 8,718 for the tiny CNN.
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'model.variant': 'tiny'}, {'model.variant': 'small'}, {'model.variant': 'base'},
          {'name': 'mlp64', 'model.variant': 'mlp', 'model.dense': (64,)},
          {'name': 'mlp256', 'model.variant': 'mlp', 'model.dense': (256,)}]
