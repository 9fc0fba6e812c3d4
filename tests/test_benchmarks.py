"""The benchmarks' PyTorch mirror against cnnjax: the same parameter count and learning-rate schedule (the
benchmarks themselves are measurements, not tests)."""

import os
import sys

import numpy as np
import pytest

from cnnjax import models, optim
from cnnjax.cli import load_experiment
from cnnjax.config import apply_overrides

torch = pytest.importorskip('torch', reason='the PyTorch mirror needs torch (pip install torch)')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import racing  # noqa: E402
import torch_reference  # noqa: E402


@pytest.mark.parametrize('experiment', ['fashion_mnist', 'mnist', 'fashion_mnist_table'])
def test_the_mirror_has_cnnjax_parameter_count(experiment):
  config = load_experiment(experiment).get_config()
  mirror = torch_reference.build_model(config, (28, 28, 1), 10)
  params = sum(p.numel() for p in mirror.parameters())
  assert params == models.count_params(models.build_model(config.model, 10), (28, 28, 1))


def test_the_mirror_follows_cnnjax_schedule_and_refuses_what_it_cannot_express():
  config = load_experiment('fashion_mnist').get_config()
  rates = torch_reference.schedule_values(config)
  shape = optim.schedule(config.optimizer, config.num_train_steps)
  for step in (0, 100, 200, 1000, config.num_train_steps):
    np.testing.assert_allclose(rates[step], 3e-3 * float(shape(step)), rtol=1e-6)
  assert rates[200] == pytest.approx(3e-3) and rates[-1] == pytest.approx(0, abs=1e-9)
  with pytest.raises(ValueError, match='--config.model.stride=1'):
    torch_reference.check_supported(apply_overrides(config, {'model.stride': 2}))
  for field, value in (('norm_scale', False), ('kernel_sizes', (3, 5)), ('pool_blocks', (0,)),
                       ('pool_padding', 'SAME'), ('block_dropout', 0.25), ('dense_norm', 'batch')):
    with pytest.raises(ValueError, match=f'--config.model.{field}='):
      torch_reference.check_supported(apply_overrides(config, {f'model.{field}': value}))
  for field, value in (('ema_decay', 0.998), ('dense_max_norm', 3.0)):
    with pytest.raises(ValueError, match=f'--config.optimizer.{field}=0'):
      torch_reference.check_supported(apply_overrides(config, {f'optimizer.{field}': value}))
  with pytest.raises(ValueError, match='--config.model.conv_init=lecun_normal'):  # PyTorch's own initialisers
    torch_reference.check_supported(apply_overrides(config, {'model.conv_init': 'dirac'}))


def test_a_race_shuffles_every_epoch_whatever_eval_every_steps_says(monkeypatch):
  """The PyTorch arm of a race draws a new permutation after each pass over its data (8 steps of 4 here), not
  after every evaluation (every 3 steps)."""
  config = apply_overrides(load_experiment('fashion_mnist').get_config(),
                           {'num_train_steps': 16, 'eval_every_steps': 3, 'batch_size': 4})
  seen = []

  class Recorder:
    def __init__(self, *args):
      pass

    def train_step(self, images, labels):
      seen.append(labels.tolist())

    def accuracy(self, *args):
      return 0.0
  monkeypatch.setattr(torch_reference, 'Trainer', Recorder)
  images, labels = np.zeros((32, 28, 28, 1), np.float32), np.arange(32)
  evals = racing.run_torch(config, 'torch_eager', (images, labels), (images, labels), (28, 28, 1), 10)
  assert [e[0] for e in evals] == [3, 6, 9, 12, 15]
  for epoch in (seen[:8], seen[8:]):  # each epoch sees every example once
    assert sorted(sum(epoch, [])) == list(range(32))


def test_a_race_refuses_augmentation_the_torch_arms_do_not_mirror():
  config = load_experiment('fashion_mnist').get_config()
  racing.check_plain_data(config)
  for flag, value in (('data.augment_flip', True), ('data.augment_crop', True), ('data.random_erasing', 0.5),
                      ('eval_flip', True), ('eval_translate', 1)):
    with pytest.raises(ValueError, match=f'--config.{flag}='):
      racing.check_plain_data(apply_overrides(config, {flag: value}))


def test_mirror_steps_fit_a_fixed_batch():
  """Ten steps on one random batch of 32 (no dropout, Adam 1e-3) memorise much of it."""
  overrides = {'optimizer.warmup_steps': 0, 'optimizer.learning_rate': 1e-3, 'model.dropout': 0.0}
  config = apply_overrides(load_experiment('fashion_mnist').get_config(), overrides)
  trainer = torch_reference.Trainer(config, (28, 28, 1), 10, 'torch_channels_last')
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(32, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 32)
  losses = [float(trainer.train_step(x, y)) for _ in range(10)]
  assert losses[0] == pytest.approx(np.log(10), rel=0.1) and losses[-1] < 0.3 * losses[0], losses


def test_a_race_summary_takes_medians_over_seeds_and_counts_runs_that_missed_the_target():
  """Three seeds' evaluations (step, seconds, accuracy), hand-computed: seconds to 0.9 are 20, 30 and 20 (median
  20); seconds per epoch, first to last evaluation, are 10, 15 and 5 (median 10)."""
  evals = [[(1, 10, 0.8), (2, 20, 0.91), (3, 30, 0.92)], [(1, 15, 0.85), (2, 30, 0.9), (3, 45, 0.9)],
           [(1, 20, 0.9), (2, 25, 0.9), (3, 30, 0.95)]]
  summary = racing.summarize(evals, 0.9)
  assert summary['seconds_to_target'] == 20 and summary['seconds_to_target_per_seed'] == [20, 30, 20]
  assert summary['seconds_per_epoch'] == 10 and summary['final_test_accuracy'] == 0.92
  assert summary['reached'] == '3/3'
  missed = racing.summarize(evals, 0.94)
  assert missed['seconds_to_target'] is None and missed['reached'] == '1/3'


def test_a_ratio_of_medians_is_paired_by_seed_with_its_bootstrap_interval():
  a, b = [10.0, 12.0, 11.0, 13.0, 9.0], [20.0, 24.0, 22.0, 26.0, 18.0]  # a is half of b on every seed
  half = racing.ratio_of_medians(a, b)
  assert half == {'ratio': 0.5, 'low': 0.5, 'high': 0.5}
  spread = racing.ratio_of_medians([10.0, 30.0, 11.0, 13.0, 9.0], b)
  assert spread['low'] <= spread['ratio'] == 11 / 22 < spread['high']  # one seed of five off the 0.5 line
