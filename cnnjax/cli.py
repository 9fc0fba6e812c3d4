"""The command line: experiments found by name in experiments/, and absl argv parsed with the experiment's config
as ``--config`` (so that ``--config.FIELD=VALUE`` overrides it). Used by launch.py and the benchmarks."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from cnnjax.config import has_field
from cnnjax.errors import ConfigError

# The experiments/ package beside the cnnjax package (a source checkout or an editable install).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS_DIR = os.path.join(ROOT, 'experiments')


def _experiments_package() -> ModuleType:
  """The experiments/ package, imported from its file: variants import their base as ``from experiments import
  shapes``, which then resolves from any working directory without touching ``sys.path``."""
  if 'experiments' not in sys.modules:
    spec = importlib.util.spec_from_file_location('experiments', os.path.join(EXPERIMENTS_DIR, '__init__.py'),
                                                  submodule_search_locations=[EXPERIMENTS_DIR])
    module = importlib.util.module_from_spec(spec)
    sys.modules['experiments'] = module
    spec.loader.exec_module(module)
  return sys.modules['experiments']


def experiment_names() -> list[str]:
  """The experiments in experiments/ (files not starting with '_')."""
  return sorted(f[:-3] for f in os.listdir(EXPERIMENTS_DIR) if f.endswith('.py') and not f.startswith('_'))


def load_experiment(name: str) -> ModuleType:
  """The module experiments/<name>.py, with ``get_config()`` and, for a sweep, ``get_sweep()``.

  Raises:
    ConfigError for an unknown name.
  """
  if name not in experiment_names():
    raise ConfigError(f'--experiment={name!r} is unknown; choose one of {experiment_names()}')
  _experiments_package()
  return importlib.import_module(f'experiments.{name}')


def parse_flags_with_experiment(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """An absl ``flags_parser``: loads ``--experiment``'s config as ``--config`` (so that ``--config.FIELD=VALUE``
  overrides apply to it), then parses ``argv``. The caller defines ``--experiment`` and its default."""
  name = flag_values['experiment'].default
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith('--experiment='):
      name = arg.split('=', 1)[1]
    elif arg == '--experiment' and i + 1 < len(argv):
      name = argv[i + 1]
  try:
    config = load_experiment(name).get_config()
  except ConfigError as e:
    sys.exit(str(e))
  for arg in argv[1:]:  # an unknown field would otherwise end in a traceback from deep inside absl
    path = arg[len('--config.'):].split('=', 1)[0] if arg.startswith('--config.') else None
    if path and not has_field(config, path):
      sys.exit(f'--config.{path} is not a field of the {name} experiment\'s config; every field is listed, with '
               'its choices, in experiments/shapes.py')
  config_flags.DEFINE_config_dict('config', config, 'The experiment\'s config; override with --config.FIELD=VALUE.',
                                  lock_config=True, flag_values=flag_values)
  try:
    return flag_values(argv)
  except (flags.Error, TypeError, ValueError) as e:  # an unknown flag, or a value of the wrong type
    hint = f'; give a value of the type of the field (see experiments/{name}.py)' if '--config.' in str(e) else ''
    sys.exit(f'{e}{hint}')


def format_config(config: ml_collections.ConfigDict) -> str:
  """The config as one ``FIELD=VALUE`` line per field, in the form ``--config.FIELD=VALUE`` takes (tuples as
  ``(8,16)``, never YAML's ``!!python/tuple``)."""
  def value(v: Any) -> str:
    return '(' + ','.join(map(str, v)) + ')' if isinstance(v, tuple | list) else str(v)
  def lines(node: dict[str, Any], prefix: str) -> list[str]:
    return [line for k, v in sorted(node.items())
            for line in (lines(v, f'{prefix}{k}.') if isinstance(v, dict) else [f'  {prefix}{k}={value(v)}'])]
  return '\n'.join(lines(config.to_dict(), ''))
