"""The shared base of the Fashion-MNIST studies: the ablation baseline (the `small` CNN, Adam, batch 128), 5
seeds, at budgets of 1.5, 3, 6 and 12 epochs of Fashion-MNIST's 55,000 training images, all from one run per seed.

Each run trains 12 epochs of warmup-stable-decay; at 1.5, 3 and 6 epochs a cooldown (the last 20 % of that
budget) branches from its constant phase and gives that budget's result (Hägele et al. 2024; a branch against a
separate cosine run of its budget: results/budgets/fashion_mnist_cpu.json, no significant difference). The
learning rate is picked at each budget from (1e-3, 3e-3, 1e-2), extended past its edge while the pick lies
there, on the mean validation accuracy over the 5 seeds, by successive halving over the budgets
(--config.lr_pick=halving). Every report compares each point with the baseline seed by seed at every budget
(paired t, Holm over points x budgets) and says whether each verdict holds at every budget.

Why these budgets: under a cosine schedule, 6 epochs is the smallest budget whose doubling gains less than 0.2
point of validation accuracy (experiments/fashion_mnist_budget.py); the studies span a factor of 8 around it,
so that the report shows how a verdict moves with the budget instead of fixing it by one choice.

The baseline point (the `small` CNN with max pooling, stride 1, a learned first layer) is the same config in
the pooling, stride, parameter and filter studies; train it once by copying its runs between the studies'
workdirs (the resume checks that the config is the same), e.g. for the stride study:
  for s in 0 1 2 3 4; do d=STRIDE/stride=1,seed=$s; mkdir -p $d; cp -r POOLING/pool=max,seed=$s/lr=* $d/; done
"""

import ml_collections

from experiments import _ablation, fashion_mnist

EPOCH = fashion_mnist.EPOCH
LONGEST_EPOCHS = 12


def get_config() -> ml_collections.ConfigDict:
  config = _ablation.get_config()
  config.data.name = 'fashion_mnist'
  config.num_train_steps = LONGEST_EPOCHS * EPOCH
  config.eval_every_steps = EPOCH
  config.checkpoint_every_steps = EPOCH
  config.optimizer.schedule = 'wsd'
  config.budgets = (0.125, 0.25, 0.5, 1.0)
  config.lr_pick = 'halving'
  return config
