r"""Parameter counts: conv stacks of three sizes vs dense networks with the same input and output sizes.

  python launch.py --experiment=params --workdir=/tmp/cnnjax/params
  python launch.py --experiment=params --analyze      # per-layer params, FLOPs, dense-equivalent counts

Runtime: about 5 minutes on 2 CPU cores. Expected: the MLPs need more parameters than the small CNNs (a
dense layer on 32x32x3 inputs has 3,072 weights per unit) and still reach lower test accuracy.
"""

from experiments import _ablation

get_config = _ablation.get_config


def get_sweep() -> list[dict]:
  return [{'model.variant': 'tiny'}, {'model.variant': 'small'}, {'model.variant': 'base'},
          {'name': 'mlp64', 'model.variant': 'mlp', 'model.dense': (64,)},
          {'name': 'mlp256', 'model.variant': 'mlp', 'model.dense': (256,)}]
