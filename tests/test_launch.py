"""The launcher as a user runs it: a subprocess with flags, on 8 forced host devices."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cnnjax import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*flags, env_devices=8):
  env = {name: value for name, value in os.environ.items() if not name.startswith('TF_')}  # the launcher's own
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={env_devices}'
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *flags], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=300)


def test_launch_runs_an_experiment_with_overrides(data_dir, tmp_path):
  out = tmp_path / 'results' / 'digits.json'
  proc = _launch('--experiment=digits', f'--workdir={tmp_path / "run"}', f'--data_dir={data_dir}',
                 '--config.num_train_steps=4', '--config.log_every_steps=2', '--config.model.pool=avg',
                 '--config.model.features=(8,8)', '--config.batch_size=32', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  hparams = next(r['hparams'] for r in rows if 'hparams' in r)
  assert hparams['model.pool'] == 'avg' and hparams['data.name'] == 'digits'
  assert [r['step'] for r in rows if 'train_loss' in r] == [2, 4]
  assert '| block1.conv | 4x4x8 |' in proc.stderr and '| **total** |' in proc.stderr  # the per-layer table
  assert 'Platform cpu x8: micro-batches of the whole batch per device; CPU speed-ups on (two-step bias, NHWC/HWIO ' \
         'conv gradients).' in proc.stderr  # 32 / 8 = 4; no BatchNorm, so no two-step BatchNorm
  assert 'Model: conv widths 8-8, dense 64, 10 outputs;' in proc.stderr  # the widths used, not ()
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path / 'run'))
  assert '\x1b[' not in proc.stderr and 'Traceback' not in proc.stderr  # no escape codes, no tracebacks
  assert 'oneDNN' not in proc.stderr and 'InitializeLog' not in proc.stderr  # nor TensorFlow's C++ notices
  result = json.loads(out.read_text())  # --out: the final metrics, stamped with the command that made them
  assert result['command'].startswith('python ') and '--experiment=digits' in result['command']
  assert {'commit', 'date', 'machine', 'versions'} <= set(result) and result['metrics']['test_accuracy'] > 0


def test_a_rerun_loads_its_programs_from_the_compilation_cache(data_dir, tmp_path):
  cache = tmp_path / 'cache'
  flags = ['--experiment=digits', f'--data_dir={data_dir}', f'--compilation_cache_dir={cache}',
           '--config.num_train_steps=2', '--config.model.features=(8,8)', '--config.batch_size=32']
  first = _launch(f'--workdir={tmp_path / "a"}', *flags)
  assert first.returncode == 0, first.stderr[-3000:]
  entries = set(os.listdir(cache))
  assert entries  # init, train step, eval step, ...
  second = _launch(f'--workdir={tmp_path / "b"}', *flags)
  assert second.returncode == 0, second.stderr[-3000:]
  assert set(os.listdir(cache)) == entries  # nothing compiled anew


@pytest.mark.parametrize('flags,message', [
    (['--experiment=nope'], "--experiment='nope' is unknown"),
    (['--config.batch_size=100'], 'Invalid config: --config.batch_size=100 must be a positive multiple of the 8'),
    (['--config.model.kernel_size=abc'], "flag --config.model.kernel_size=abc: invalid literal for int()"),
    (['--config.model.strid=2'], "--config.model.strid is not a field of the shapes experiment's config"),
    (['--config.optimizer.learning_rate=nan'], '--config.optimizer.learning_rate=nan must be a finite number > 0'),
    (['--config.model.features=abc'], "--config.model.features=('abc',) must be a tuple of integers >= 1"),
    (['--nosuchflag=1'], "Unknown command line flag 'nosuchflag'"),
])
def test_launch_refuses_bad_input_with_one_clear_line(tmp_path, flags, message):
  workdir = tmp_path / 'work'
  proc = _launch(f'--workdir={workdir}', *flags)
  assert proc.returncode != 0 and message in proc.stderr
  assert 'Traceback' not in proc.stderr and not workdir.exists()
  assert ('type of the field' in proc.stderr) == ('kernel_size=abc' in flags[0])  # a hint only for a value's type
  assert 'its config (override a field' not in proc.stderr  # the error alone, not the whole config before it


def _start_array(workdir, data_dir, *flags, tasks=3):
  """Every task of a cluster array (--sweep_index=0..tasks-1) started at once, as a scheduler does."""
  env = {name: value for name, value in os.environ.items() if not name.startswith('TF_')}
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  common = ['--experiment=shapes', f'--workdir={workdir}', f'--data_dir={data_dir}', '--config.model.variant=tiny',
            '--config.num_train_steps=30', '--config.lr_pick=point', f'--config.seeds={tasks}', *flags]
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'launch.py'), *common, f'--sweep_index={i}'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
           for i in range(tasks)]
  return [(p.wait(timeout=600), p.stderr.read()) for p in procs]


def test_a_cluster_array_under_lr_pick_point_finishes_every_task_at_once(data_dir, tmp_path):
  """The lead seed picks the learning rate; the other seeds' tasks, started with it, wait for its pick (saying
  so) instead of training the lead themselves and colliding with its task in its workdir."""
  tasks = _start_array(tmp_path / 'sweep', data_dir, '--config.lr_grid=(0.001,0.01)',
                       '--config.lr_grid_extensions=0')
  for status, stderr in tasks:
    assert status == 0 and 'Traceback' not in stderr and 'Stopped' not in stderr, stderr[-3000:]
  assert any('Waiting for base,seed=0 to pick the learning rate' in stderr for _, stderr in tasks)  # not who trains it
  picked = sweep.load_result(str(tmp_path / 'sweep' / 'base,seed=0')).lr.picked
  for seed in (1, 2):
    result = sweep.load_result(str(tmp_path / 'sweep' / f'base,seed={seed}'))
    assert (result.lr.picked, result.lr.grid, result.lr.picked_by) == (picked, (picked,), 'base,seed=0')


def test_a_lead_whose_pick_fails_stops_every_task_in_one_line(data_dir, tmp_path):
  """Every rate of the lead's grid diverges: each task stops in one line naming that cause, whether it waited
  for the lead's task (sweep.PickFailed) or, arriving after that failure, tried the lead itself."""
  tasks = _start_array(tmp_path / 'sweep', data_dir, '--config.lr_grid=(1e6,1e7)', '--config.lr_grid_extensions=0',
                       '--config.optimizer.grad_clip_norm=0', '--config.optimizer.name=sgd')
  for status, stderr in tasks:
    stops = [line for line in stderr.splitlines() if line.startswith('Stopped:')]
    assert status == 1 and 'Traceback' not in stderr and len(stops) == 1, stderr[-3000:]
    assert 'every learning rate of [1000000.0, 10000000.0] diverged; lower --config.lr_grid' in stops[0], stops[0]


def test_list_points_prints_one_sweep_point_per_line():
  proc = _launch('--experiment=pooling', '--list_points', env_devices=1)
  assert proc.returncode == 0, proc.stderr[-2000:]
  points = ['pool=max', 'pool=avg', 'pool=none', 'conv_stride2']  # 5 seeds each, the ablations' default
  assert proc.stdout.split() == [f'{p},seed={s}' for p in points for s in range(5)]
  proc = _launch('--experiment=pooling', '--list_points', '--config.lr_pick=point', env_devices=1)
  lines = proc.stdout.splitlines()
  assert len(lines) == 20 and lines[5] == 'pool=avg,seed=0  (lead: picks the learning rate for its other seeds)'
  assert [i for i, line in enumerate(lines) if 'lead' in line] == [0, 5, 10, 15]


# launch.py as if the BLOCKED packages were not installed: every import finder is told not to see them, so
# importing one fails and importlib.util.find_spec finds nothing, as for a missing package.
NO_TENSORFLOW = ('import runpy, sys\n'
                 'class Hidden:\n'
                 '  def __init__(self, finder):\n'
                 '    self.finder = finder\n'
                 '  def find_spec(self, name, path=None, target=None):\n'
                 '    if name.split(".")[0] in BLOCKED or not hasattr(self.finder, "find_spec"):\n'
                 '      return None\n'
                 '    return self.finder.find_spec(name, path, target)\n'
                 '  def find_distributions(self, *args, **kwargs):\n'
                 '    return getattr(self.finder, "find_distributions", lambda *a, **k: [])(*args, **kwargs)\n'
                 '  def invalidate_caches(self):\n'
                 '    getattr(self.finder, "invalidate_caches", lambda: None)()\n'
                 'sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]\n'
                 'sys.argv = ["launch.py", *sys.argv[1:]]\n'
                 'try:\n'
                 '  runpy.run_path("launch.py", run_name="__main__")\n'
                 'finally:\n'
                 '  print("imported:", sorted(m for m, v in sys.modules.items()\n'
                 '                             if v and m.split(".")[0] in BLOCKED))\n')
NO_TF_NOR_TFDS = 'BLOCKED = ("tensorflow", "tensorflow_datasets")\n' + NO_TENSORFLOW
NO_TF = 'BLOCKED = ("tensorflow",)\n' + NO_TENSORFLOW


def test_a_run_on_prepared_arrays_imports_no_tensorflow(data_dir, tmp_path):
  flags = ['--experiment=shapes', f'--data_dir={data_dir}', '--config.data.pipeline=device',
           '--config.model.variant=tiny', '--config.num_train_steps=4', '--config.batch_size=32']
  first = _launch(f'--workdir={tmp_path / "prepare"}', *flags)  # writes the arrays once (with TensorFlow)
  assert first.returncode == 0, first.stderr[-3000:]
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  proc = subprocess.run([sys.executable, '-c', NO_TF_NOR_TFDS, f'--workdir={tmp_path / "run"}', *flags],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'imported: []' in proc.stdout and 'test_accuracy=' in proc.stderr


def test_without_tensorflow_and_without_arrays_the_run_says_what_to_install(tmp_path):
  proc = subprocess.run([sys.executable, '-c', NO_TF_NOR_TFDS, f'--workdir={tmp_path / "run"}',
                         f'--data_dir={tmp_path / "empty"}', '--config.data.pipeline=device'],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  assert re.search(r'Stopped: --config.data.name=shapes is not prepared as arrays in this --data_dir, and preparing '
                   r'it needs TensorFlow Datasets .*; pip install tensorflow-datasets', proc.stderr)
  assert not (tmp_path / 'run').exists()


def test_without_tensorflow_a_fresh_data_dir_is_prepared_as_array_record_with_the_same_examples(data_dir, tmp_path):
  from cnnjax import arrays, data
  from cnnjax.cli import load_experiment
  from cnnjax.config import apply_overrides
  fresh = tmp_path / 'data'
  flags = ['--experiment=digits', '--config.num_train_steps=4', '--config.model.variant=tiny', f'--data_dir={fresh}']
  proc = subprocess.run([sys.executable, '-c', NO_TF, f'--workdir={tmp_path / "run"}', *flags],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'imported: []' in proc.stdout and 'test_accuracy=' in proc.stderr
  (info,) = (fresh / 'digits').rglob('dataset_info.json')
  assert json.loads(info.read_text())['fileFormat'] == 'array_record'
  config = apply_overrides(load_experiment('digits').get_config(), {'data.pipeline': 'device'}).data
  with_tf = arrays.write(data.prepare(config, data_dir), str(tmp_path / 'tfrecord_arrays'))
  assert with_tf == arrays.find(arrays.location(config, str(fresh)))
  for split in ('train', 'test'):  # TFDS wrote the same examples in the same order in both formats
    a = arrays.load(str(tmp_path / 'tfrecord_arrays'), split)
    b = arrays.load(arrays.location(config, str(fresh)), split)
    assert a.keys() == b.keys() == {'image', 'label'}
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


def test_without_tensorflow_the_host_pipeline_trains_from_the_arrays(tmp_path):
  """The host pipeline reads the prepared arrays (memory-mapped) as the device pipeline does: no TensorFlow."""
  proc = subprocess.run([sys.executable, '-c', NO_TF, f'--workdir={tmp_path / "run"}', '--experiment=digits',
                         f'--data_dir={tmp_path / "data"}', '--config.data.pipeline=host',
                         '--config.num_train_steps=20'], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0 and 'imported: []' in proc.stdout and 'test_accuracy=' in proc.stderr, proc.stderr[-2000:]


def test_without_tensorflow_a_tfds_name_is_prepared_and_trains(tmp_path):
  """tfds:NAME without TensorFlow: TFDS prepares array_record files, whose random-access data source hands over
  the encoded images that pillow decodes."""
  proc = subprocess.run([sys.executable, '-c', NO_TF, f'--workdir={tmp_path / "run"}', '--experiment=digits',
                         '--config.data.name=tfds:digits', f'--data_dir={tmp_path / "data"}',
                         '--config.num_train_steps=20'], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0 and 'imported: []' in proc.stdout and 'test_accuracy=' in proc.stderr, proc.stderr[-2000:]
  (info,) = (tmp_path / 'data' / 'cnnjax_arrays').glob('tfds-digits-8/info.json')
  assert json.loads(info.read_text())['source']['kind'] == 'tfds'


def test_without_tensorflow_a_dataset_to_download_stops_in_one_line(tmp_path):
  proc = subprocess.run([sys.executable, '-c', NO_TF, f'--workdir={tmp_path / "run"}', '--config.data.name=cifar10',
                         f'--data_dir={tmp_path / "data"}'], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  assert 'Stopped: preparing cifar10 from its download needs TensorFlow (TFDS encodes its images' in proc.stderr
  assert not (tmp_path / 'run').exists()
