"""Config checks and overrides."""

import pytest

from cnnjax.config import ConfigError, apply_overrides, check_ints, check_number, has_field


def test_apply_overrides_copies_and_checks_fields(config):
  changed = apply_overrides(config, {'model.stride': 2, 'name': 'x', 'head': 'binary'})
  assert (changed.model.stride, changed.head, config.model.stride, config.head) == (2, 'binary', 1, 'multiclass')
  for path in ('model.strid', 'modle.stride', 'seed.x'):
    with pytest.raises(ConfigError, match=f"'{path}' is not a config field"):
      apply_overrides(config, {path: 2})


def test_has_field_follows_nested_paths(config):
  assert has_field(config, 'model.stride') and has_field(config, 'seed')
  assert not has_field(config, 'model.strid') and not has_field(config, 'seed.x')


def test_checks_name_the_flag_and_the_value():
  with pytest.raises(ConfigError, match=r'--config.optimizer.learning_rate'):
    check_number('optimizer.learning_rate', -1.0, 0.0, low_open=True)
  with pytest.raises(ConfigError, match=r'--config.model.features'):
    check_ints('model.features', (8, 0), 1, '(32,64)')
