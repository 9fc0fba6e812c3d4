r"""The centre of the Fashion-MNIST studies' budgets (they span 1.5 to 12 epochs around it), chosen on validation.

  python launch.py --experiment=fashion_mnist_budget --workdir=/tmp/cnnjax/fm_budget \
      --records=results/runs/fashion_mnist_budget --out=results/experiments/fashion_mnist_budget.json

The studies' shared baseline point (the `small` CNN with 2x2 max pooling, Adam 3e-3) trained for 16 epochs at a
constant learning rate after warm-up, 3 seeds, validation accuracy after every epoch. The rule: the budget is the
first epoch from which the seeds' mean validation accuracy gains less than 0.2 point per epoch over the next two
epochs (report.md's validation-curve table, row "plateau"; report.plateau). A constant rate separates "still
learning" from the late gain of a decaying schedule; the studies then train their cosine schedule over that many
epochs. Measured: the plateau is epoch 3 (0.9177, then 0.9203, 0.9198); later epochs overfit (0.9174 at 16).
Three more points check the choice under the studies' own schedule (cosine decay, learning rate 3e-3 as the
baseline picked): 3, 6 and 12 epochs, seed by seed; the studies' budget is the smallest whose doubling gains
less than 0.2 point of mean validation accuracy. Measured: 6 epochs are +0.0094 test accuracy over 3 (Holm p
0.016; validation 0.9236 -> 0.9287), 12 are +0.0003 over 6 (validation 0.9285): the budget is 6 epochs. The
constant-rate rule alone stops short of what a decaying schedule still gains.
"""

import ml_collections

from experiments import _ablation, fashion_mnist

EPOCH = fashion_mnist.EPOCH
PLATEAU_EPOCHS = 3  # what the constant-rate rule chose: the 'baseline' point's plateau, evaluation 3


def get_config() -> ml_collections.ConfigDict:
  config = _ablation.get_config()
  config.data.name = 'fashion_mnist'
  config.optimizer.schedule = 'warmup_constant'
  config.seeds = 3
  config.lr_grid = ()
  config.num_train_steps = 16 * EPOCH
  config.eval_every_steps = EPOCH
  config.checkpoint_every_steps = EPOCH
  config.baseline_point = 'cosine_budget'
  return config


def get_sweep() -> list[dict]:
  cosine = {'optimizer.schedule': 'warmup_cosine'}
  return [{'name': 'baseline'}, {'name': 'cosine_budget', **cosine, 'num_train_steps': PLATEAU_EPOCHS * EPOCH},
          *({'name': f'cosine_{k}x_budget', **cosine, 'num_train_steps': k * PLATEAU_EPOCHS * EPOCH} for k in (2, 4))]
