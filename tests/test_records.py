"""Run names: formatted and parsed in one place, each the other's inverse."""

import pytest

from cnnjax import records


@pytest.mark.parametrize('name,run,lr_dir', [
    (records.RunName('pool=max', 3, 0.003), 'pool=max,seed=3', 'lr=0.003'),
    (records.RunName('conv_stride2', 0), 'conv_stride2,seed=0', ''),
    (records.RunName('base', None, 1e-4), 'base', 'lr=0.0001'),
    (records.RunName('features=8-16,seed_like', None, 0.0316), 'features=8-16,seed_like', 'lr=0.0316'),
])
def test_a_run_name_is_formatted_and_parsed_back(name, run, lr_dir):
  assert (name.run, name.lr_dir) == (run, lr_dir)
  assert records.RunName.parse(run, lr_dir) == name
