"""Several budgets from one run: the wsd schedule against hand-computed rates, each shorter budget's branch
against a separate run of that budget (bitwise), and the flags that cannot serve."""

import numpy as np
import pytest

from cnnjax import budgets, optim, train
from cnnjax.config import ConfigError, apply_overrides


def _budgets(config, **overrides):
  return apply_overrides(config, {'optimizer.schedule': 'wsd', 'optimizer.warmup_steps': 5, 'num_train_steps': 40,
                                  'budgets': (0.5, 1.0), 'log_every_steps': 10, 'eval_every_steps': 10,
                                  'checkpoint_every_steps': 10, **overrides})


def test_wsd_rises_holds_and_falls_to_zero_over_its_cooldown(config):
  config = _budgets(config, **{'optimizer.warmup_steps': 10, 'optimizer.cooldown_fraction': 0.2})
  shape = optim.schedule(config.optimizer, 100)  # warm-up 0..10, constant to 80, linear to 0 at 100
  got = [float(shape(s)) for s in (0, 5, 10, 50, 80, 90, 100)]
  assert got == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0])
  assert optim.decay_start(config.optimizer, 100) == 80 and budgets.branch_step(config, 0.5) == 16


def test_a_shorter_budget_is_the_separate_run_of_that_budget_to_the_last_bit(config, data_dir, tmp_path):
  config = _budgets(config)
  together = train.train_and_evaluate(config, str(tmp_path / 'budgets'), data_dir)
  alone = train.train_and_evaluate(apply_overrides(config, {'num_train_steps': 20, 'budgets': ()}),
                                   str(tmp_path / 'alone'), data_dir)
  branch = {k.removeprefix('budget=0.5/'): v for k, v in together.metrics.items() if k.startswith('budget=0.5/')}
  assert branch == {k: v for k, v in alone.metrics.items() if k.startswith(('val_', 'test_'))}  # exactly: same weights
  assert together.metrics['budget=1/test_loss'] == together.metrics['test_loss']
  assert (tmp_path / 'budgets' / 'budget=0.5' / 'checkpoints').is_dir()
  again = train.train_and_evaluate(config, str(tmp_path / 'budgets'), data_dir)  # finished: resumed, not retrained
  assert again.metrics == together.metrics and again.start_step == 40
  # Stopped in the constant phase, then inside the branch's cooldown, then resumed: the same run to the last bit.
  stopped = str(tmp_path / 'stopped')
  assert train.train_and_evaluate(config, stopped, data_dir, until=16) is None  # where budget 0.5 branches
  branch = budgets.branch_config(config, 0.5)
  assert train.train_and_evaluate(branch, budgets.branch_dir(stopped, 0.5), data_dir, until=18) is None
  assert train.train_and_evaluate(config, stopped, data_dir).metrics == together.metrics


@pytest.mark.parametrize('overrides,message', [
    ({'budgets': (0.5, 0.25, 1.0)}, 'must increase and end at 1.0'),
    ({'budgets': (0.25, 0.5)}, 'must increase and end at 1.0'),
    ({'budgets': (0.0, 1.0)}, r'must be fractions of num_train_steps in \(0, 1\]'),
    ({'budgets': ('abc', 1.0)}, r'must be fractions of num_train_steps in \(0, 1\]'),
    ({'optimizer.schedule': 'warmup_cosine'}, 'set --config.optimizer.schedule=wsd'),
    ({'budgets': (0.1, 1.0)}, r'the budget 0.1 would branch at step 3, inside the 5-step warm-up'),
    ({'population': 'on'}, 'set --config.population=off or auto'),
])
def test_budgets_that_cannot_serve_are_refused_naming_the_flag(config, overrides, message):
  with pytest.raises(ConfigError, match=message):
    train.validate(_budgets(config, **overrides), 8)


def test_the_loop_stops_at_each_branch_step(config):
  from cnnjax import loop
  config = _budgets(config, **{'num_train_steps': 400, 'log_every_steps': 100, 'eval_every_steps': 100,
                               'checkpoint_every_steps': 100, 'budgets': (0.25, 1.0)})
  assert budgets.branch_steps(config) == [80]
  assert loop.chunk(70, 10, config) == 10 and loop.chunk(75, 10, config) == 1  # 75 + 10 would pass 80
  assert np.isclose(float(optim.schedule(config.optimizer, 100)(80)), 1.0)  # the budget's cooldown starts there
