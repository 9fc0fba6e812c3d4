"""Reliability: real SIGKILL/SIGTERM, corrupt checkpoints, foreign workdirs, NaN guard, bad input, determinism."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cnnjax import checkpointing, models, train
from cnnjax.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FLAGS = ['--experiment=shapes', '--config.model.variant=tiny', '--config.num_train_steps=60',
             '--config.checkpoint_every_steps=5', '--config.log_every_steps=5', '--config.eval_every_steps=60',
             '--config.batch_size=32', '--config.data.augment_flip=True', '--config.data.shuffle_buffer=500']


def _start(workdir, data_dir):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  return subprocess.Popen([sys.executable, os.path.join(ROOT, 'launch.py'), f'--workdir={workdir}',
                           f'--data_dir={data_dir}', *RUN_FLAGS], env=env, cwd=ROOT,
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


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_preemption_signals_are_caught_and_handlers_restored(sig):
  before = signal.getsignal(sig)
  with checkpointing.PreemptionSignals() as preemption:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # the handler runs between bytecodes of the main thread
    assert preemption.requested == sig
  assert signal.getsignal(sig) is before


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
  with pytest.raises(checkpointing.Preempted, match=r'saved a checkpoint at step (\d+)') as err:
    train.train_and_evaluate(config, preempted, data_dir)
  assert 0 < err.value.step < 60 and err.value.step % 25  # saved at the step it stopped on, off the schedule
  assert str(err.value.step) in os.listdir(os.path.join(preempted, 'checkpoints'))
  assert train.train_and_evaluate(config, preempted, data_dir).start_step == err.value.step
  jax.tree.map(np.testing.assert_array_equal, _params(preempted, 60), _params(full, 60))
  logged = {*range(10, 61, 10), *range(25, 61, 25), err.value.step}  # log steps; saves write metrics too
  _assert_each_step_once(os.path.join(preempted, 'metrics.jsonl'), sorted(logged))


def test_a_finished_run_launched_again_writes_no_row_twice(config, data_dir, tmp_path):
  first = train.train_and_evaluate(config, str(tmp_path), data_dir)
  again = train.train_and_evaluate(config, str(tmp_path), data_dir)  # re-evaluates what the run left
  assert again.start_step == 20 and again.metrics == first.metrics
  _assert_each_step_once(str(tmp_path / 'metrics.jsonl'), [10, 20])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(config, data_dir, tmp_path, caplog):
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir, data_dir)  # checkpoints at 10 and 20
  want = _params(workdir, 20)
  data = os.path.join(workdir, 'checkpoints', '20', 'default', 'd')
  for name in os.listdir(data):  # truncate every data file of the latest checkpoint
    with open(os.path.join(data, name), 'r+b') as f:
      f.truncate(os.path.getsize(f.name) // 2)
  with caplog.at_level('WARNING'):
    assert train.train_and_evaluate(config, workdir, data_dir).start_step == 10  # trains 11..20 again
  assert 'Checkpoint at step 20 is unreadable' in caplog.text
  assert len(os.listdir(os.path.join(workdir, 'corrupt_checkpoints'))) == 1  # kept, not deleted
  jax.tree.map(np.testing.assert_array_equal, _params(workdir, 20), want)


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
  with pytest.raises(train.NonFiniteLoss, match=r'the training loss is (nan|inf) at step (\d+); the last good '
                                                r'checkpoint is step (\d+) \(kept\)') as err:
    train.train_and_evaluate(_diverging(config), str(tmp_path), data_dir)
  bad_step = int(err.value.args[0].split(' at step ')[1].split(';')[0])
  steps = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints'))
  assert steps and steps[-1] == bad_step - 1 and bad_step > 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(str(tmp_path), steps[-1])))


def test_nonfinite_loss_before_any_checkpoint_says_none_was_written(config, data_dir, tmp_path):
  config = _diverging(config)
  config.optimizer.learning_rate, config.checkpoint_every_steps = 1e38, 10  # diverges before step 10
  with pytest.raises(train.NonFiniteLoss, match=r'at step \d; no checkpoint was written yet\. Lower'):
    train.train_and_evaluate(config, str(tmp_path), data_dir)
  assert not (tmp_path / 'checkpoints').exists() or not os.listdir(tmp_path / 'checkpoints')


def test_a_workdir_in_use_is_refused_naming_the_holder_and_writing_nothing(config, data_dir, tmp_path):
  workdir = tmp_path / 'run'
  with checkpointing.WorkdirLock(str(workdir)):  # as a running launch holds it
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob('*')}
    with pytest.raises(ConfigError, match=rf'--workdir={workdir} is in use by {socket.gethostname()} pid '
                                          rf'{os.getpid()}; wait for that run to end'):
      train.train_and_evaluate(config, str(workdir), data_dir)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob('*')} == before  # nothing written
  train.train_and_evaluate(config, str(workdir), data_dir)  # free again


def test_the_lock_of_a_sigkilled_process_does_not_block(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; from cnnjax import checkpointing\n'
                             f'with checkpointing.WorkdirLock({str(tmp_path)!r}):\n'
                             '  print("held", flush=True); time.sleep(300)'], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  with pytest.raises(ConfigError, match=rf'is in use by \S+ pid {holder.pid}'):
    checkpointing.WorkdirLock(str(tmp_path)).__enter__()
  holder.kill()
  holder.wait(timeout=60)
  with checkpointing.WorkdirLock(str(tmp_path)):
    assert open(tmp_path / checkpointing.LOCK_FILE).read() == f'{socket.gethostname()} pid {os.getpid()}\n'


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
  with pytest.raises(ConfigError, match=r'did not finish in 1 s \(no internet\?\).*offline dataset'):
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
