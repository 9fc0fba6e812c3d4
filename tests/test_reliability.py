"""Reliability: real SIGKILL/SIGTERM, corrupt checkpoints, foreign workdirs, NaN guard, bad input, determinism."""

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cnnjax import errors, loop, models, train, workdirs
from cnnjax.cli import load_experiment
from cnnjax.errors import ConfigError, DownloadTimeout, StorageError, WorkdirInUse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FLAGS = ['--experiment=shapes', '--config.model.variant=tiny', '--config.num_train_steps=60',
             '--config.checkpoint_every_steps=5', '--config.log_every_steps=5', '--config.eval_every_steps=60',
             '--config.batch_size=32', '--config.data.augment_flip=True']


def _start(workdir, data_dir, *extra_flags):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  return subprocess.Popen([sys.executable, os.path.join(ROOT, 'launch.py'), f'--workdir={workdir}',
                           f'--data_dir={data_dir}', *RUN_FLAGS, *extra_flags], env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _params(workdir, step=None):
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')) as manager:
    return manager.restore(step or manager.latest_step(), args=ocp.args.StandardRestore())['params']


def _wait_for_checkpoint(workdir, proc, step, timeout=240):
  """Polls until a finished checkpoint of ``step`` or later exists (orbax renames it into place when done)."""
  deadline = time.time() + timeout
  path = os.path.join(workdir, 'checkpoints')
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(path) and any(d.isdigit() and int(d) >= step for d in os.listdir(path)):
      return
    time.sleep(0.05)
  raise AssertionError(f'no checkpoint of step {step} appeared; stderr: {proc.communicate()[1][-2000:]}')


@pytest.fixture(scope='module')
def uninterrupted(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  proc = _start(workdir, data_dir)
  assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
  return _params(workdir, 60)


def test_sigkilled_run_resumes_bitwise_exactly(uninterrupted, data_dir, tmp_path):
  workdir = str(tmp_path)
  proc = _start(workdir, data_dir)
  _wait_for_checkpoint(workdir, proc, 15)  # then killed at whatever step it has reached, mid-run
  proc.kill()
  assert proc.wait(timeout=60) == -signal.SIGKILL
  killed_at = max(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  assert killed_at < 60, 'the run finished before the kill; nothing was tested'
  proc = _start(workdir, data_dir)  # the same command again: the killed run's lock does not block it
  assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
  assert f'Resumed from {workdir} at step {killed_at}' in proc.stderr.read()
  jax.tree.map(np.testing.assert_array_equal, _params(workdir, 60), uninterrupted)
  _assert_each_step_once(os.path.join(workdir, 'metrics.jsonl'), range(5, 61, 5))


def _assert_each_step_once(path, log_steps):
  """Every metric of metrics.jsonl at each step once, and train metrics at exactly ``log_steps``."""
  rows = [json.loads(line) for line in open(path)]
  seen = [(r['step'], k) for r in rows if 'step' in r for k in r if k not in ('step', 'time')]
  assert len(seen) == len(set(seen)), sorted(x for x in seen if seen.count(x) > 1)[:5]
  assert [r['step'] for r in rows if 'train_loss' in r] == list(log_steps)
  assert sum('hparams' in r for r in rows) == 1


def test_sigterm_saves_the_current_step_and_resumes_exactly(config, data_dir, tmp_path):
  sig = signal.SIGTERM
  config.num_train_steps, config.checkpoint_every_steps = 60, 25
  full, preempted = str(tmp_path / 'full'), str(tmp_path / 'preempted')
  train.train_and_evaluate(config, full, data_dir)

  def send_signal_after_training_starts():
    while not os.path.exists(os.path.join(preempted, 'metrics.jsonl')):
      time.sleep(0.01)
    time.sleep(0.2)
    os.kill(os.getpid(), sig)  # a real signal, handled in the main thread

  threading.Thread(target=send_signal_after_training_starts, daemon=True).start()
  with pytest.raises(errors.Preempted, match=r'saved a checkpoint at step (\d+)') as err:
    train.train_and_evaluate(config, preempted, data_dir)
  assert 0 < err.value.step < 60 and err.value.step % 25  # saved at the step it stopped on, off the schedule
  assert str(err.value.step) in os.listdir(os.path.join(preempted, 'checkpoints'))
  assert train.train_and_evaluate(config, preempted, data_dir).start_step == err.value.step
  jax.tree.map(np.testing.assert_array_equal, _params(preempted, 60), _params(full, 60))
  logged = {*range(10, 61, 10), *range(25, 61, 25), err.value.step}  # log steps; saves write metrics too
  _assert_each_step_once(os.path.join(preempted, 'metrics.jsonl'), sorted(logged))


def test_a_signal_while_a_finished_run_is_evaluated_still_stops(config, data_dir, tmp_path, monkeypatch):
  """A sweep resumes its finished runs (evaluating them); SIGTERM then must stop it, not only that run."""
  train.train_and_evaluate(config, str(tmp_path), data_dir)
  evaluate = loop.evaluate

  def evaluate_and_signal(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # handled in this (the main) thread before the next bytecode
    return evaluate(*args, **kwargs)

  monkeypatch.setattr(loop, 'evaluate', evaluate_and_signal)
  with pytest.raises(errors.Preempted, match='saved a checkpoint at step 20'):
    train.train_and_evaluate(config, str(tmp_path), data_dir)


def test_a_finished_run_launched_again_writes_no_row_twice(config, data_dir, tmp_path):
  first = train.train_and_evaluate(config, str(tmp_path), data_dir)
  again = train.train_and_evaluate(config, str(tmp_path), data_dir)  # re-evaluates what the run left
  assert again.start_step == 20 and again.metrics == first.metrics
  _assert_each_step_once(str(tmp_path / 'metrics.jsonl'), [10, 20])


@pytest.mark.parametrize('damage', ['truncated', 'emptied', 'flipped_byte'])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_alone(config, data_dir, tmp_path, caplog, damage):
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir, data_dir)  # checkpoints at 10 and 20
  want = _params(workdir, 20)
  rows_before = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  latest = tmp_path / 'checkpoints' / '20'
  if damage == 'emptied':  # rm -rf checkpoints/20/*
    for path in latest.iterdir():
      shutil.rmtree(path) if path.is_dir() else path.unlink()
  for name in os.listdir(latest / 'default' / 'd') if damage != 'emptied' else ():
    path = latest / 'default' / 'd' / name
    data = bytearray(path.read_bytes())
    if damage == 'truncated':
      data = data[:len(data) // 2]
    else:
      data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
  with caplog.at_level('WARNING'):
    assert train.train_and_evaluate(config, workdir, data_dir).start_step == 10  # trains 11..20 again
  assert 'Checkpoint 20 is unreadable' in caplog.text and 'Checkpoint 10' not in caplog.text
  assert len(os.listdir(os.path.join(workdir, 'corrupt_checkpoints'))) == 1  # set aside alone, not deleted
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10', '20']
  jax.tree.map(np.testing.assert_array_equal, _params(workdir, 20), want)
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [r for r in rows if r.get('step', 0) <= 10] == [r for r in rows_before if r.get('step', 0) <= 10]
  _assert_each_step_once(str(tmp_path / 'metrics.jsonl'), [10, 20])


def test_workdir_of_another_config_is_refused_unless_overwrite(config, data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  config.num_train_steps = 2
  train.train_and_evaluate(config, workdir, data_dir)
  config.model.stride, config.log_every_steps = 2, 1  # log_every_steps alone would be allowed
  with pytest.raises(ConfigError, match=r'holds a run of a different config \(model.stride: 1 -> 2\)'):
    train.train_and_evaluate(config, workdir, data_dir)
  train.train_and_evaluate(config, workdir, data_dir, overwrite=True)
  moved = [d for d in os.listdir(tmp_path) if d.startswith('run.overwritten-')]
  assert len(moved) == 1 and os.listdir(tmp_path / moved[0] / 'checkpoints') == ['2']
  assert json.load(open(os.path.join(workdir, 'config.json')))['model']['stride'] == 2


def _diverging(config):
  config.optimizer.name, config.optimizer.schedule, config.optimizer.learning_rate = 'sgd', 'constant', 1e30
  config.optimizer.grad_clip_norm, config.checkpoint_every_steps, config.log_every_steps = 0.0, 1, 1
  return config


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(config, data_dir, tmp_path):
  with pytest.raises(errors.NonFiniteLoss, match=r'the training loss is (nan|inf) at step (\d+); the last good '
                                                r'checkpoint is step (\d+) \(kept\)') as err:
    train.train_and_evaluate(_diverging(config), str(tmp_path), data_dir)
  bad_step = int(err.value.args[0].split(' at step ')[1].split(';')[0])
  steps = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints'))
  assert steps and steps[-1] == bad_step - 1 and bad_step > 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(str(tmp_path), steps[-1])))


def test_nonfinite_loss_before_any_checkpoint_says_none_was_written(config, data_dir, tmp_path):
  config = _diverging(config)
  config.optimizer.learning_rate, config.checkpoint_every_steps = 1e38, 10  # diverges before step 10
  with pytest.raises(errors.NonFiniteLoss, match=r'at step \d; no checkpoint was written yet\. Lower'):
    train.train_and_evaluate(config, str(tmp_path), data_dir)
  assert not (tmp_path / 'checkpoints').exists() or not os.listdir(tmp_path / 'checkpoints')


def test_a_workdir_in_use_is_refused_naming_the_holder_and_writing_nothing(config, data_dir, tmp_path):
  workdir = tmp_path / 'run'
  with workdirs.WorkdirLock(str(workdir)):  # as a running launch holds it
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob('*')}
    with pytest.raises(WorkdirInUse, match=rf'--workdir={workdir} is in use by {socket.gethostname()} pid '
                                          rf'{os.getpid()}; wait for that run to end'):
      train.train_and_evaluate(config, str(workdir), data_dir)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob('*')} == before  # nothing written
  train.train_and_evaluate(config, str(workdir), data_dir)  # free again


def test_skip_nonfinite_skips_bad_updates(config, data_dir, tmp_path):
  config = _diverging(config)
  config.skip_nonfinite, config.num_train_steps = True, 6
  result = train.train_and_evaluate(config, str(tmp_path), data_dir)
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert sum(r.get('train_skipped_steps', 0) for r in rows) >= 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(str(tmp_path), 6)))
  assert 'test_loss' in result.metrics  # it ran to the end and evaluated


def test_offline_download_times_out_with_advice(config, tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', lambda self, **kw: time.sleep(30))
  config.data.name, config.data.download_timeout_s = 'mnist', 1
  start = time.time()
  with pytest.raises(DownloadTimeout, match=r'did not finish in 1 s \(no internet\?\).*offline dataset'):
    train.train_and_evaluate(config, str(tmp_path / 'work'), str(tmp_path / 'data'))
  assert time.time() - start < 20 and not (tmp_path / 'work').exists()


def test_data_dir_that_is_not_a_directory_is_refused(config, tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(ConfigError, match='--data_dir=.*file is not a readable and writable directory'):
    train.train_and_evaluate(config, str(tmp_path / 'work'), str(tmp_path / 'file'))
  assert not (tmp_path / 'work').exists()


def test_same_config_and_seed_give_bitwise_identical_metrics(config, data_dir, tmp_path):
  config.data.augment_flip = config.data.augment_crop = True
  config.num_train_steps, config.log_every_steps, config.eval_every_steps = 10, 2, 5
  runs = []
  for name in ('a', 'b'):
    train.train_and_evaluate(config, str(tmp_path / name), data_dir)
    rows = [json.loads(line) for line in open(tmp_path / name / 'metrics.jsonl')]
    runs.append([{k: v for k, v in r.items() if k not in ('steps_per_sec', 'uptime', 'time')} for r in rows])
  assert runs[0] == runs[1] and any('train_loss' in r for r in runs[0])


def _out_size(n, k, s, p, d):  # independent closed form: SAME -> ceil(n / s), else floor((n + 2p - k_eff) / s) + 1
  return -(-n // s) if p == 'SAME' else (n + 2 * (0 if p == 'VALID' else int(p)) - d * (k - 1) - 1) // s + 1


def _closed_form_sizes(size, blocks, k, s, p, d, pool, pw, ps):
  """Map sides after each block, or None if some window cannot fit (a side below 1) or a size is < 1."""
  if min(k, s, pw, ps) < 1:
    return None
  n, sides = size, []
  for _ in range(blocks):
    n = _out_size(n, k, s, p, d)
    if n >= 1 and pool != 'none':
      n = _out_size(n, pw, ps, 'VALID', 1)
    if n < 1:
      return None
    sides.append(n)
  return sides


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(8, 64), blocks=st.integers(1, 3), k=st.sampled_from([1, 2, 3, 3, 3, 5, 7, 0]),
       s=st.sampled_from([1, 1, 1, 2, 2, 3, 0, -1]), p=st.sampled_from(['SAME', 'SAME', 'VALID', '0', '1', '2']),
       d=st.sampled_from([1, 1, 1, 2, 3]), pool=st.sampled_from(['max', 'avg', 'none']),
       pw=st.sampled_from([2, 2, 1, 3]), ps=st.sampled_from([2, 2, 1, 3, 0]))
def test_random_configs_are_refused_exactly_when_the_closed_form_says_they_cannot_fit(
    config, size, blocks, k, s, p, d, pool, pw, ps):
  config.data.image_size = size
  m = config.model
  m.features, m.kernel_size, m.stride, m.padding, m.dilation = (3,) * blocks, k, s, p, d
  m.pool, m.pool_window, m.pool_stride = pool, pw, ps
  sides = _closed_form_sizes(size, blocks, k, s, p, d, pool, pw, ps)
  try:
    train.validate(config, 8)
  except ConfigError as e:
    event('refused')
    assert sides is None, f'refused a geometry that fits ({sides}): {e}'
    assert '--config.' in str(e) or 'block' in str(e), e
    return
  event('built')
  assert sides is not None, 'accepted a geometry whose closed form has a side below 1'
  model = models.build_model(m, 6)
  x = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  _, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=['intermediates']),
                            variables, x)
  got = [state['intermediates'][f'block{i}']['__call__'][0].shape for i in range(blocks)]
  assert got == [(1, n, n, 3) for n in sides]


# ---------------------------------------------------------------------------------------------------------
# Every config field is validated before anything is written.

BAD_VALUES = (-1, 0, 0.5, 'abc', None, (-1,), True, float('nan'))
# Of BAD_VALUES, those each field of the base config accepts; every other one must be refused in one line. A new
# field must be listed here: a field added without validation accepts values this table does not, and fails.
VALID = {
    'analysis.invariance_shifts': {0}, 'baseline_point': set(), 'batch_size': set(), 'checkpoint_every_steps': set(),
    'cpu_speedups': set(), 'data.augment_crop': {True}, 'data.augment_flip': {True},
    'data.crop_padding': {0}, 'data.download_timeout_s': {0.5}, 'data.image_size': {0}, 'data.name': set(),
    'data.grayscale': set(),  # True: only a folder's or a tfds: dataset's images are converted
    'data.positive_class': {0}, 'data.prefetch': set(), 'data.random_erasing': {0, 0.5},
    'data.regression_target': {'abc'},  # a feature name; the regression head refuses one its dataset lacks
    'data.pipeline': set(), 'data.source_dir': set(), 'data.val_fraction': {0, 0.5},
    'eval_batch_size': set(), 'budgets': set(), 'optimizer.cooldown_fraction': {0.5},
    'eval_every_steps': set(), 'eval_flip': {True}, 'eval_translate': {0}, 'head': set(),
    'keep_checkpoints': set(),
    'label_smoothing': {0, 0.5}, 'log_every_steps': set(), 'lr_grid': set(), 'lr_grid_extensions': {0},
    'lr_pick': set(),
    'microbatch_size': {0},
    'model.activation': set(), 'model.conv_impl': set(), 'model.dense': set(), 'model.dilation': set(),
    'model.dropout': {0, 0.5}, 'model.dtype': set(), 'model.features': set(), 'model.first_layer': set(),
    'model.flip_kernel': {True}, 'model.kernel_size': set(), 'model.norm': set(), 'model.norm_groups': set(),
    'model.norm_scale': {True}, 'model.conv_init': set(), 'model.kernel_sizes': set(), 'model.pool_blocks': set(),
    'model.pool_padding': set(), 'model.block_dropout': {0, 0.5}, 'model.dense_norm': set(),
    'model.padding': set(), 'model.pool': set(), 'model.pool_stride': set(), 'model.pool_window': set(),
    'model.stride': set(), 'model.variant': set(), 'num_train_steps': set(), 'optimizer.grad_clip_norm': {0, 0.5},
    'optimizer.ema_decay': {0, 0.5}, 'optimizer.dense_max_norm': {0, 0.5},
    'optimizer.learning_rate': {0.5}, 'optimizer.momentum': {0, 0.5}, 'optimizer.name': set(),
    'optimizer.nesterov': {True}, 'optimizer.schedule': set(), 'optimizer.warmup_steps': {0},
    'optimizer.weight_decay': {0}, 'parallel': set(), 'population': set(), 'population_map': set(),
    'rng_impl': set(), 'seed': {0}, 'seeds': set(),
    'skip_nonfinite': {True}, 'steps_per_dispatch': set(), 'test_checkpoint': set(),
}


def _leaf_paths(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaf_paths(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


class _Accepted(Exception):
  pass


def _same(a, b):
  return type(a) is type(b) and (a == b or a != a and b != b)  # NaN is itself here


def test_every_field_refuses_bad_values_in_one_line_before_writing(data_dir, tmp_path, monkeypatch):
  from cnnjax import arrays, data, sweep
  from cnnjax.errors import CnnjaxError

  def accepted(*args, **kwargs):
    raise _Accepted  # validation passed: stop before data or training
  monkeypatch.setattr(data, 'prepare', accepted)
  monkeypatch.setattr(arrays, 'find', accepted)  # the device pipeline's arrays, which other tests wrote
  base = load_experiment('shapes').get_config().to_dict()
  assert sorted(_leaf_paths(base)) == sorted(VALID), 'list every config field in VALID'
  wrong = []
  for path in sorted(VALID):
    for value in BAD_VALUES:
      config = ml_collections.ConfigDict(base, type_safe=False)  # wrong types too, as a config file could hold
      *parents, field = path.split('.')
      node = config
      for parent in parents:
        node = node[parent]
      node[field] = value
      if not _same(node[field], value):  # ConfigDict converted it (True to 1.0 for a float field): not this value
        continue
      workdir = tmp_path / 'work'
      try:
        sweep.run_experiment(config, None, str(workdir), data_dir)
        outcome = 'accepted without error'
      except _Accepted:
        outcome = 'accepted'
      except CnnjaxError as e:
        outcome = 'refused' if '\n' not in str(e) and not workdir.exists() else f'refused badly: {e!r}'
      expected = 'accepted' if any(_same(value, v) for v in VALID[path]) else 'refused'
      if outcome != expected:
        wrong.append(f'{path}={value!r}: {outcome}, expected {expected}')
  assert not wrong, '\n'.join(wrong)


# ---------------------------------------------------------------------------------------------------------
# Storage faults: one line naming what failed, where and what is intact; no traceback.

def test_a_disk_that_fills_up_mid_run_stops_in_one_line_and_the_run_resumes(data_dir, mount_point):
  disk = mount_point(['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs'])
  workdir, steps = disk / 'run', '--config.num_train_steps=400'  # long enough to be running when the disk fills
  proc = _start(str(workdir), data_dir, steps)
  _wait_for_checkpoint(str(workdir), proc, 10)
  with open(disk / 'filler', 'wb', buffering=0) as f:  # another program takes the rest of the disk; unbuffered,
    with pytest.raises(OSError, match='No space left'):  # so closing it has no partial write left to fail on
      while True:
        f.write(b'\0' * 65536)
  assert proc.wait(timeout=300) == 1
  stderr = proc.stderr.read()
  stops = [line for line in stderr.splitlines() if line.startswith('Stopped:')]
  assert len(stops) == 1, stderr[-3000:]
  last = stops[0]
  assert re.fullmatch(r'Stopped: (saving checkpoint \d+|writing the run) failed: No space left on device.*'
                      rf'Checkpoint \d+ in {workdir}/checkpoints is intact.* Free space there, then run the same '
                      r'command again\.', last), last
  assert 'Traceback' not in stderr
  intact = int(re.search(r'Checkpoint (\d+)', last).group(1))
  os.remove(disk / 'filler')
  proc = _start(str(workdir), data_dir, steps)
  assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
  assert f'Resumed from {workdir} at step {intact}' in proc.stderr.read()


def test_a_read_only_workdir_is_refused_in_one_line(config, data_dir, mount_point, tmp_path):
  source = tmp_path / 'source'
  source.mkdir()
  readonly = mount_point(['--bind', str(source)], ['-o', 'remount,bind,ro'])
  with pytest.raises(StorageError, match=rf'^writing the run failed: Read-only file system \({readonly}/run\)\. No '
                                         r'checkpoint was written yet\. The filesystem is read-only: remount it '
                                         r'writable or use another --workdir\.$'):
    train.train_and_evaluate(config, str(readonly / 'run'), data_dir)


@pytest.mark.parametrize('where', ['run', 'run/sub'])
def test_a_workdir_blocked_by_a_file_is_refused_in_one_line(config, data_dir, tmp_path, where):
  (tmp_path / 'run').write_text('a file, not a directory')
  with pytest.raises(StorageError, match=r'^writing the run failed: (File exists|Not a directory) \(.*\)\. No '
                                         r'checkpoint was written yet\. A file stands where a directory should be'):
    train.train_and_evaluate(config, str(tmp_path / where), data_dir)


@pytest.mark.parametrize('code', [errno.ENOSPC, errno.EACCES])
def test_a_failing_metrics_write_stops_in_one_line_naming_the_intact_checkpoint(config, data_dir, tmp_path, code,
                                                                                monkeypatch):
  from cnnjax import writers
  write = writers.JsonlWriter.write_scalars

  def failing(self, step, scalars):  # the disk fails after the first checkpoint (step 10)
    if step > 10:
      raise OSError(code, os.strerror(code), str(tmp_path / 'metrics.jsonl'))
    return write(self, step, scalars)

  monkeypatch.setattr(writers.JsonlWriter, 'write_scalars', failing)
  with pytest.raises(StorageError, match=rf'^writing the run failed: {os.strerror(code)} \({tmp_path}/metrics.jsonl\)'
                                         rf'\. Checkpoint 10 in {tmp_path}/checkpoints is intact\. '):
    train.train_and_evaluate(config, str(tmp_path), data_dir)


# ---------------------------------------------------------------------------------------------------------
# Damaged files of a run.

def test_damaged_metrics_lines_are_skipped_with_one_warning_and_the_rest_kept(config, data_dir, tmp_path, caplog):
  train.train_and_evaluate(config, str(tmp_path), data_dir)
  path = tmp_path / 'metrics.jsonl'
  lines = path.read_text().splitlines(keepends=True)
  path.write_text(''.join(lines[:2] + ['\n', '{"step": 7, "trai\n'] + lines[2:]))
  with caplog.at_level('WARNING'):
    again = train.train_and_evaluate(config, str(tmp_path), data_dir)  # resumes the finished run
  assert again.start_step == 20
  assert caplog.text.count('skipped 2 damaged lines') == 1
  assert path.read_text().splitlines(keepends=True) == lines  # every good row kept, in order
  assert (tmp_path / 'metrics.jsonl.damaged').read_text() == '\n{"step": 7, "trai\n'  # nothing lost


def test_a_cut_result_json_is_named_with_its_fix(config, data_dir, tmp_path):
  from cnnjax import sweep
  from cnnjax.errors import DamagedFile
  config.num_train_steps = 2
  sweep.run(config, lambda: [{'model.pool': 'max'}], str(tmp_path), data_dir)
  result = tmp_path / 'pool=max' / 'result.json'
  result.write_text(result.read_text()[:40])
  with pytest.raises(DamagedFile, match=rf'^{result} is unreadable \(JSONDecodeError: .*\); move it away and run the '
                                        'sweep again: the point resumes from its checkpoints'):
    sweep.run(config, lambda: [{'model.pool': 'max'}], str(tmp_path), data_dir, report_only=True)


# ---------------------------------------------------------------------------------------------------------
# Data: a shared data_dir prepared once, damaged files named before training, downloads that give up.

PREPARE = ('import sys; from absl import logging; logging.set_verbosity("info")\n'
           'from cnnjax import data; from cnnjax.cli import load_experiment\n'
           'config = load_experiment("shapes").get_config()\n'
           'data.prepare(config.data, sys.argv[1]); print("prepared", flush=True)\n')


def test_two_processes_preparing_one_fresh_data_dir_prepare_it_once(tmp_path):
  data_dir = tmp_path / 'tfds'
  first = subprocess.Popen([sys.executable, '-c', PREPARE, str(data_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not (data_dir / '.cnnjax-prepare-shapes.lock').exists() and time.time() < deadline:
    time.sleep(0.05)  # the first is preparing (generation takes seconds)
  second = subprocess.Popen([sys.executable, '-c', PREPARE, str(data_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  outs = [p.communicate(timeout=300) for p in (first, second)]
  assert [p.returncode for p in (first, second)] == [0, 0], [err[-2000:] for _, err in outs]
  assert all(out.endswith('prepared\n') for out, _ in outs), outs
  assert 'Waiting for another process that is preparing shapes' in outs[1][1]
  assert 'Generating shapes in' in outs[0][1] and 'Generating shapes in' not in outs[1][1]  # once, by the first
  assert 'Traceback' not in outs[1][1] and '\x1b[' not in outs[0][1]  # and quietly: no progress bars


def _digits(tmp_path):
  config = load_experiment('digits').get_config()
  config.model.variant, config.num_train_steps, config.batch_size = 'tiny', 2, 32
  return config, str(tmp_path / 'tfds')


@pytest.mark.parametrize('sealed', [True, False])
def test_a_damaged_dataset_file_is_named_before_anything_is_written(tmp_path, sealed):
  from cnnjax import data
  from cnnjax.errors import DataError
  config, data_dir = _digits(tmp_path)
  builder = data.prepare(config.data, data_dir)  # prepared and sealed
  record = next(p for p in os.listdir(builder.data_dir) if '-train.tfrecord' in p)
  path = os.path.join(builder.data_dir, record)
  blob = bytearray(open(path, 'rb').read())
  blob[len(blob) // 2] ^= 0x01
  open(path, 'wb').write(blob)
  if not sealed:  # as TFDS or an older cnnjax left it: found by reading every record once
    os.remove(os.path.join(builder.data_dir, 'cnnjax_manifest.json'))
  expected = (rf'{record} changed since it was written \(checksum mismatch\)' if sealed
              else r'split train: DataLossError: .*')
  with pytest.raises(DataError, match=rf'^the prepared digits data in {builder.data_dir} is damaged \({expected}\); '
                                      r'move that directory away and run again to prepare it anew$'):
    train.train_and_evaluate(config, str(tmp_path / 'work'), data_dir)
  assert not (tmp_path / 'work').exists()


def test_a_download_that_times_out_ends_the_process_within_seconds(tmp_path):
  silent = socket.socket()  # a proxy that accepts connections and never answers: a download that hangs
  silent.bind(('127.0.0.1', 0))
  silent.listen(16)
  proxy = f'http://127.0.0.1:{silent.getsockname()[1]}'
  env = {**os.environ, 'HTTP_PROXY': proxy, 'HTTPS_PROXY': proxy, 'http_proxy': proxy, 'https_proxy': proxy}
  start = time.time()
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), f'--workdir={tmp_path / "work"}',
                         f'--data_dir={tmp_path / "data"}', '--config.data.name=mnist',
                         '--config.data.download_timeout_s=3'], env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  elapsed = time.time() - start
  silent.close()
  assert proc.returncode == 1
  assert re.fullmatch(r'Stopped: --config.data.name=mnist is not in --data_dir=.* did not finish in 3 s .*',
                      proc.stderr.strip().splitlines()[-1]), proc.stderr[-2000:]  # on a line of its own
  assert elapsed < 60, f'the process took {elapsed:.0f} s to exit after a 3 s time limit'
  assert not (tmp_path / 'work').exists()
