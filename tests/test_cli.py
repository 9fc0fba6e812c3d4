"""Experiments found by name, from any working directory, without touching sys.path."""

import os
import subprocess
import sys

import pytest

from cnnjax import sweep, train
from cnnjax.cli import experiment_names, format_config, load_experiment
from cnnjax.config import ConfigError, apply_overrides


@pytest.mark.parametrize('name', experiment_names())
def test_every_experiment_and_sweep_point_is_a_valid_config(name):
  module = load_experiment(name)
  config = module.get_config()
  points = sweep.expand(module.get_sweep(), config.seeds, config.seed) if hasattr(module, 'get_sweep') else []
  for point in points or [sweep.Point('config', 'config', {})]:
    train.validate(apply_overrides(config, point.overrides), 8)
  assert module.__doc__ and f'--experiment={name}' in module.__doc__  # the docstring gives the command


def test_an_unknown_experiment_names_the_choices():
  with pytest.raises(ConfigError, match=r"--experiment='nope' is unknown; choose one of \[.*'shapes'"):
    load_experiment('nope')


def test_a_variant_loads_from_another_directory_without_patching_sys_path(tmp_path):
  """digits imports its base as `from experiments import shapes`: that resolves from anywhere."""
  code = ('import sys; from cnnjax.cli import load_experiment; before = list(sys.path); '
          'c = load_experiment("digits").get_config(); assert sys.path == before; print(c.data.name)')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path,
                        env={**os.environ, 'PYTHONPATH': ''}, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == 'digits', proc.stderr[-2000:]


def test_the_logged_config_is_one_flag_form_line_per_field(config):
  config.model.features = (8, 16)
  text = format_config(config)
  assert '  model.features=(8,16)\n' in text and '  model.dense=()\n' in text and '!!python' not in text
  assert text.splitlines() == sorted(text.splitlines())
