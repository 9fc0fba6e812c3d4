"""workdirs: the lock, --overwrite's move-aside (refusing runs that are training), config identity, signals."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cnnjax import workdirs
from cnnjax.cli import load_experiment
from cnnjax.errors import ConfigError, DamagedFile, WorkdirInUse


def _hold_lock(workdir):
  """A real process holding ``workdir``'s lock until killed."""
  holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; from cnnjax import workdirs\n'
                             f'with workdirs.WorkdirLock({str(workdir)!r}):\n'
                             '  print("held", flush=True); time.sleep(300)'], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  return holder


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_preemption_signals_are_caught_and_handlers_restored(sig):
  before = signal.getsignal(sig)
  with workdirs.PreemptionSignals() as preemption:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # the handler runs between bytecodes of the main thread
    assert preemption.requested == sig
  assert signal.getsignal(sig) is before


def test_the_lock_of_a_sigkilled_process_does_not_block(tmp_path):
  holder = _hold_lock(tmp_path)
  with pytest.raises(WorkdirInUse, match=rf'is in use by \S+ pid {holder.pid}'):
    workdirs.WorkdirLock(str(tmp_path)).__enter__()
  holder.kill()
  holder.wait(timeout=60)
  with workdirs.WorkdirLock(str(tmp_path)):
    assert open(tmp_path / workdirs.LOCK_FILE).read() == f'{socket.gethostname()} pid {os.getpid()}\n'


def test_overwrite_refuses_to_move_a_tree_in_which_a_run_is_training(tmp_path):
  sweep = tmp_path / 'sweep'
  (sweep / 'done').mkdir(parents=True)
  (sweep / 'done' / 'result.json').write_text('{}')
  holder = _hold_lock(sweep / 'runA')
  try:
    with pytest.raises(WorkdirInUse, match=rf'--overwrite would move {sweep}, but the run in {sweep / "runA"} is '
                                           rf'training \(\S+ pid {holder.pid}\); wait for it'):
      workdirs.move_aside(str(sweep))
    assert sorted(os.listdir(sweep)) == ['done', 'runA'] and sorted(os.listdir(tmp_path)) == ['sweep']  # moved nothing
  finally:
    holder.kill()
    holder.wait(timeout=60)
  workdirs.move_aside(str(sweep))  # free now: everything but nothing of ours moves
  aside = [d for d in os.listdir(tmp_path) if d.startswith('sweep.overwritten-')]
  assert os.listdir(sweep) == [] and sorted(os.listdir(tmp_path / aside[0])) == ['done', 'runA']


def test_moved_aside_names_are_unique_within_one_second(tmp_path):
  run = tmp_path / 'run'
  for i in range(3):
    run.mkdir(exist_ok=True)
    (run / 'metrics.jsonl').write_text(str(i))
    workdirs.move_aside(str(run))
  asides = sorted(d for d in os.listdir(tmp_path) if d != 'run')
  assert len(asides) == 3
  assert sorted((tmp_path / d / 'metrics.jsonl').read_text() for d in asides) == ['0', '1', '2']


def test_a_symlinked_workdir_is_moved_aside_in_its_targets_tree(tmp_path):
  target, link = tmp_path / 'storage' / 'run', tmp_path / 'link'
  target.mkdir(parents=True)
  (target / 'metrics.jsonl').write_text('old')
  link.symlink_to(target)
  workdirs.move_aside(str(link))
  assert os.path.islink(link) and os.readlink(link) == str(target) and os.listdir(target) == []
  asides = [d for d in os.listdir(tmp_path / 'storage') if d.startswith('run.overwritten-')]
  assert len(asides) == 1 and (tmp_path / 'storage' / asides[0] / 'metrics.jsonl').read_text() == 'old'
  assert sorted(os.listdir(tmp_path)) == ['link', 'storage']


def test_a_held_workdir_moves_all_but_its_own_lock(tmp_path):
  with workdirs.WorkdirLock(str(tmp_path / 'run')):
    (tmp_path / 'run' / 'config.json').write_text('{}')
    workdirs.move_aside(str(tmp_path / 'run'))
    assert os.listdir(tmp_path / 'run') == [workdirs.LOCK_FILE]


def test_check_refuses_another_config_and_names_an_unreadable_config_json(tmp_path):
  config = load_experiment('shapes').get_config()
  workdirs.write_config(config, str(tmp_path))
  workdirs.check(config, str(tmp_path), overwrite=False)  # the same config: resumes
  config.model.stride = 2
  with pytest.raises(ConfigError, match=r'holds a run of a different config \(model.stride: 1 -> 2\)'):
    workdirs.check(config, str(tmp_path), overwrite=False)
  (tmp_path / 'config.json').write_text('{"seed": 0, "mod')  # cut
  with pytest.raises(DamagedFile, match=rf'{tmp_path / "config.json"} is unreadable \(JSONDecodeError: .*\); restore '
                                        'it from a copy, or add --overwrite') as err:
    workdirs.check(config, str(tmp_path), overwrite=False)
  assert '\n' not in str(err.value)
  workdirs.check(config, str(tmp_path), overwrite=True)  # moves it aside instead
  assert not (tmp_path / 'config.json').exists()


def test_a_run_from_before_a_field_existed_resumes_under_its_neutral_value(tmp_path):
  """config.json without a field added since (workdirs.ADDED_FIELDS) matches the field's neutral value, which is
  the base config's default, and no other value."""
  config = load_experiment('shapes').get_config()
  for field, value in workdirs.ADDED_FIELDS.items():
    section, _, name = field.rpartition('.')
    assert (config[section] if section else config)[name] == value
  written = config.to_dict()
  for field in workdirs.ADDED_FIELDS:
    section, _, name = field.rpartition('.')
    del (written[section] if section else written)[name]
  (tmp_path / 'config.json').write_text(json.dumps(written))
  workdirs.check(config, str(tmp_path), overwrite=False)
  config.optimizer.ema_decay = 0.5
  with pytest.raises(ConfigError, match=r'different config \(optimizer.ema_decay: 0.0 -> 0.5\)'):
    workdirs.check(config, str(tmp_path), overwrite=False)


def test_a_run_may_resume_under_the_other_back_end_but_not_with_another_weight_decay(tmp_path):
  """--config.parallel (pmap or shard_map; the checkpoint layout is one) and population_map change the program,
  not the run: a resume may switch them (docs/scaling.md). An adam run written when the base config held an ignored
  weight_decay=1e-4 resumes under today's 0; an adamw run's decay is part of its identity."""
  config = load_experiment('shapes').get_config()
  workdirs.write_config(config, str(tmp_path))
  config.parallel, config.population_map = 'shard_map', 'vmap'
  workdirs.check(config, str(tmp_path), overwrite=False)
  written = json.loads((tmp_path / 'config.json').read_text())
  written['optimizer']['weight_decay'] = 1e-4
  (tmp_path / 'config.json').write_text(json.dumps(written))
  workdirs.check(config, str(tmp_path), overwrite=False)
  written['optimizer']['name'] = config.optimizer.name = 'adamw'
  (tmp_path / 'config.json').write_text(json.dumps(written))
  with pytest.raises(ConfigError, match=r'different config \(optimizer.weight_decay: 0.0001 -> 0.0\)'):
    workdirs.check(config, str(tmp_path), overwrite=False)


def test_write_config_writes_the_whole_config_atomically(tmp_path):
  config = load_experiment('shapes').get_config()
  workdirs.write_config(config, str(tmp_path))
  assert json.loads((tmp_path / 'config.json').read_text()) == json.loads(json.dumps(config.to_dict()))
  assert os.listdir(tmp_path) == ['config.json']  # no temporary file left
