"""The shared base of the ablation sweeps: the shapes baseline, shortened so that a sweep runs in minutes."""

import ml_collections

from experiments import shapes


def get_config() -> ml_collections.ConfigDict:
  config = shapes.get_config()
  config.num_train_steps = 300
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 300
  config.keep_checkpoints = 1
  return config
