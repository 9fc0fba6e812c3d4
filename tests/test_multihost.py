"""Two real processes on 127.0.0.1 (2 CPU devices each, gloo collectives) against a one-process run."""

import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnnjax import parallel, train
from cnnjax.config import apply_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {'model.variant': 'tiny', 'batch_size': 32, 'eval_batch_size': 64, 'num_train_steps': 6,
             'checkpoint_every_steps': 6, 'eval_every_steps': 6, 'log_every_steps': 3}


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_two_processes(workdir, data_dir, backend, *extra_flags):
  port = _free_port()
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
  flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()] + [f'--config.parallel={backend}', *extra_flags]
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'launch.py'), '--multihost',
                             f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}',
                             f'--workdir={workdir}', f'--data_dir={data_dir}', *flags],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=300)[1] for p in procs]
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, "\n\n".join(log[-2500:] for log in logs)
  return [re.search(r'Process (\d): final params fingerprint (\w+)', log).groups() for log in logs]


def _one_process_reference(config, data_dir):
  """The same 6 steps in this process on 4 devices, each global batch both processes' rows of it."""
  run = train.setup(config, data_dir)
  init_rng, dropout_rng = run.keys()
  step = jax.pmap(run.step_fn, axis_name=parallel.AXIS, in_axes=(0, 0, None))  # the host pipeline's step
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:4]), (parallel.AXIS,))
  state = parallel.replicate(run.init_state(init_rng), mesh)
  for i in range(config.num_train_steps):
    batch = run.pipeline.batch(i, rows=(4, 0, 4))  # [4, 8, ...]: both processes' rows
    state, _ = step(state, parallel.shard(batch, mesh), dropout_rng)
  return jax.tree.map(lambda x: parallel.local_value(x)[0], state.params), run


@pytest.mark.parametrize('backend', parallel.BACKENDS)
def test_two_processes_agree_with_each_other_and_with_one_process(config, data_dir, tmp_path, backend):
  (p0, fp0), (p1, fp1) = _run_two_processes(str(tmp_path), data_dir, backend, '--config.data.pipeline=host')
  assert (p0, p1) == ('0', '1') and fp0 == fp1  # bitwise-identical params on both processes
  want, run = _one_process_reference(apply_overrides(config, OVERRIDES), data_dir)
  target = run.init_state(run.keys()[0])  # this process's topology (8 devices, not the writers' 4)
  with ocp.CheckpointManager(str(tmp_path / 'checkpoints')) as manager:
    written = manager.restore(6, args=ocp.args.StandardRestore(target)).params  # written collectively
  assert train.params_fingerprint(written) == fp0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), written, want)


def test_two_processes_on_the_device_pipeline_agree_with_one_process_on_eight_devices(config, data_dir, tmp_path):
  """The device pipeline's batches depend on (seed, step) alone, so 2 processes x 2 devices train what one
  process on 8 devices does; the processes agree on the pipeline auto chooses (process 0's choice)."""
  (p0, fp0), (p1, fp1) = _run_two_processes(str(tmp_path / 'two'), data_dir, 'shard_map')  # auto: device
  assert (p0, p1) == ('0', '1') and fp0 == fp1
  one = train.train_and_evaluate(apply_overrides(config, {**OVERRIDES, 'data.pipeline': 'device'}),
                                 str(tmp_path / 'one'), data_dir)
  target = one.run.init_state(one.run.keys()[0])
  with ocp.CheckpointManager(str(tmp_path / 'two' / 'checkpoints')) as manager:
    written = manager.restore(6, args=ocp.args.StandardRestore(target)).params
  assert train.params_fingerprint(written) == fp0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), written, one.variables['params'])
