"""Training: learning on shapes, shared compiled programs, exact resume (with the other back-end too), no
re-tracing, memory maps that do not grow run after run, other heads, refused configs, platform choices,
populations against their solo runs."""

import functools
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnnjax import parallel, population, steps, train
from cnnjax.cli import load_experiment
from cnnjax.config import ConfigError, apply_overrides


def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [row for row in map(json.loads, f) if 'step' in row]


def _checkpoint(workdir, step):
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')) as manager:
    return manager.restore(step, args=ocp.args.StandardRestore())


def _checkpoint_params(workdir, step):
  return _checkpoint(workdir, step)['params']


def test_training_on_shapes_learns(config, data_dir, tmp_path):
  config.model.variant = 'small'
  config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 150, 150, 150
  result = train.train_and_evaluate(config, str(tmp_path), data_dir)
  losses = [r['train_loss'] for r in _read_metrics(str(tmp_path)) if 'train_loss' in r]
  assert losses[-1] < 0.7 * losses[0]
  assert result.metrics['test_accuracy'] > 0.5  # chance is 1/6
  assert result.metrics['num_params'] == 136614 and result.start_step == 0
  assert os.listdir(tmp_path / 'checkpoints') == ['150']
  jax.tree.map(np.testing.assert_array_equal, result.variables['params'], _checkpoint_params(str(tmp_path), 150))


def test_best_val_tests_the_checkpoint_with_the_best_validation_accuracy(config, data_dir, tmp_path):
  """test_checkpoint=best_val: the tested weights are those of the step with the highest logged validation
  accuracy (equal to the regular checkpoint of that step), and their validation accuracy is the one logged."""
  config.test_checkpoint, config.label_smoothing, config.data.random_erasing = 'best_val', 0.1, 0.5
  config.optimizer.learning_rate = 3e-2  # noisy, so the best is rarely simply the last
  config.eval_every_steps, config.checkpoint_every_steps, config.keep_checkpoints = 5, 5, 10
  result = train.train_and_evaluate(config, str(tmp_path), data_dir)
  logged = {r['step']: r['val_accuracy'] for r in _read_metrics(str(tmp_path)) if 'val_accuracy' in r}
  step = result.metrics['selected_step']
  assert sorted(logged) == [5, 10, 15, 20] and logged[step] == max(logged.values())
  np.testing.assert_allclose(result.metrics['val_accuracy'], logged[step], rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, result.variables['params'], _checkpoint_params(str(tmp_path), step))
  assert os.listdir(tmp_path / 'best_checkpoint') == [str(step)]


@pytest.mark.parametrize('backend', parallel.BACKENDS)
def test_learning_rates_and_seeds_share_one_compiled_program(config, data_dir, backend):
  """The peak learning rate lives in the optimizer state, so an lr grid's runs and a sweep's seeds lower to
  the same program (which the persistent compilation cache compiles once); the rate itself still differs."""
  config.parallel = backend
  programs = set()
  for lr, seed in ((1e-3, 0), (3e-2, 1)):
    run = train.setup(apply_overrides(config, {'optimizer.learning_rate': lr, 'seed': seed}), data_dir)
    state = run.backend.from_checkpoint(run.init_state(run.keys()[0]))
    assert float(parallel.first(state.opt_state.hyperparams['learning_rate'])) == pytest.approx(lr)
    batch = run.pipeline.train_inputs(0)()
    programs.add(run.train_step.lower(state, batch, run.keys()[1]).as_text())
  assert len(programs) == 1


@pytest.mark.skipif(not os.path.exists('/proc/self/maps'), reason='counts the memory maps that Linux lists')
def test_runs_in_one_process_do_not_accumulate_memory_maps(config, data_dir, tmp_path):
  """Every run compiles its own programs; kept, each adds hundreds of memory maps, and a sweep of a few hundred
  runs reaches vm.max_map_count (65,530), where LLVM aborts the process."""
  def maps_after_a_run(seed):
    train.train_and_evaluate(apply_overrides(config, {'seed': seed}), str(tmp_path / str(seed)), data_dir)
    with open('/proc/self/maps') as f:
      return sum(1 for _ in f)
  counts = [maps_after_a_run(seed) for seed in range(4)]
  assert counts[-1] - counts[1] < 100, counts  # without clearing: about 370 more per run


def test_shard_map_backend_trains_end_to_end(config, data_dir, tmp_path):
  config.parallel, config.num_train_steps = 'shard_map', 10
  result = train.train_and_evaluate(config, str(tmp_path), data_dir)
  assert np.isfinite(result.metrics['test_loss']) and os.listdir(tmp_path / 'checkpoints') == ['10']
  again = train.train_and_evaluate(config, str(tmp_path), data_dir)  # restores the replicated checkpoint layout
  assert again.start_step == 10
  jax.tree.map(np.testing.assert_array_equal, again.variables, result.variables)


def test_a_run_resumes_with_the_other_back_end(config, data_dir, tmp_path):
  """Killed after step 10's checkpoint under pmap, resumed under shard_map (docs/scaling.md): the relaunch takes
  the checkpoint and ends where the run would have, up to the back-ends' rounding."""
  full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
  want = train.train_and_evaluate(config, full, data_dir)  # pmap; checkpoints at 10 and 20
  shutil.copytree(full, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '20'))
  config.parallel = 'shard_map'
  got = train.train_and_evaluate(config, resumed, data_dir)
  assert got.start_step == 10
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), got.variables, want.variables)


@pytest.mark.parametrize('norm', ['none', 'batch'])
def test_resume_equals_uninterrupted_run(config, data_dir, tmp_path, norm):
  config.data.augment_flip = config.data.augment_crop = True
  config.model.norm, config.microbatch_size = norm, 0
  full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
  train.train_and_evaluate(config, full, data_dir)  # checkpoints at 10 and 20
  shutil.copytree(full, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '20'))  # as if killed after step 10's checkpoint
  assert train.train_and_evaluate(config, resumed, data_dir).start_step == 10
  want, got = _checkpoint(full, 20), _checkpoint(resumed, 20)
  jax.tree.map(np.testing.assert_array_equal, got, want)  # params, optimizer state and batch statistics
  assert bool(want['batch_stats']) == (norm == 'batch')


def test_train_step_is_traced_once(config, data_dir, tmp_path, monkeypatch):
  traces, original = [], steps.train_step

  def counting_train_step(*args, **kwargs):
    traces.append(1)  # Python side effects run only while tracing
    return original(*args, **kwargs)

  monkeypatch.setattr(steps, 'train_step', counting_train_step)
  train.train_and_evaluate(config, str(tmp_path), data_dir)
  assert len(traces) == 1


@pytest.mark.parametrize('head', ['binary', 'regression'])
def test_other_heads_train(config, data_dir, tmp_path, head):
  config.head, config.num_train_steps = head, 10
  metrics = train.train_and_evaluate(config, str(tmp_path), data_dir).metrics
  assert np.isfinite(metrics['test_loss']) and np.isfinite(metrics['val_loss'])
  assert ('test_accuracy' in metrics) == (head == 'binary') and ('test_mae' in metrics) == (head == 'regression')


def test_one_step_end_to_end_on_mocked_mnist(config, tmp_path, mock_dataset):
  config.data.name, config.num_train_steps = 'mnist', 1
  with mock_dataset('mnist', 100):  # 100 test examples in one eval batch padded to 512
    metrics = train.train_and_evaluate(config, str(tmp_path / 'work'), str(tmp_path / 'data')).metrics
  correct = metrics['test_accuracy'] * 100
  assert abs(correct - round(correct)) < 1e-4  # a mean over exactly the 100 real examples, padding masked
  assert [r['step'] for r in _read_metrics(str(tmp_path / 'work')) if 'train_loss' in r] == [1]


INVALID = [
    ({'batch_size': 100}, r'--config.batch_size=100 must be a positive multiple of the 8 devices; use e.g. '
                          r'--config.batch_size=96'),
    ({'microbatch_size': -1}, r'--config.microbatch_size=-1 must be auto or an int >= 0'),
    ({'microbatch_size': 'some'}, r"--config.microbatch_size='some' must be auto or an int >= 0"),
    ({'cpu_speedups': 'yes'}, r"--config.cpu_speedups='yes' is unknown"),
    ({'optimizer.learning_rate': float('nan')}, r'--config.optimizer.learning_rate=nan must be a finite number > 0'),
    ({'optimizer.learning_rate': float('inf')}, r'--config.optimizer.learning_rate=inf must be a finite number > 0'),
    ({'optimizer.warmup_steps': -3}, r'--config.optimizer.warmup_steps=-3 must be an integer >= 0'),
    ({'optimizer.momentum': 2.0}, r'--config.optimizer.momentum=2.0 must be a finite number in \[0, 1\)'),
    ({'model.dtype': 'float8'}, r"--config.model.dtype='float8' is unknown"),
    ({'microbatch_size': 3}, r'--config.microbatch_size=3 must divide the per-device batch of 8 '
                             r'\(--config.batch_size=64 over 8 devices\); use e.g. --config.microbatch_size=2'),
    ({'model.stride': 0}, r'--config.model.stride=0 must be an integer >= 1'),
    ({'model.features': (4, 4, 4, 4, 4, 4)}, r'block5.pool: pool window 2x2 is larger than its padded input 1x1'),
    ({'model.padding': 'VALID', 'model.kernel_size': 7, 'data.image_size': 16}, r'block1.conv: conv window 7x7'),
    ({'optimizer.name': 'lion'}, r"--config.optimizer.name='lion' is unknown"),
    ({'model.activation': 'swish2'}, r"--config.model.activation='swish2' is unknown"),
    ({'model.pool': 'median'}, r"--config.model.pool='median' is unknown"),
    ({'data.name': 'imagenet'}, r"--config.data.name='imagenet' is unknown"),
    ({'head': 'ranking'}, r"--config.head='ranking' is unknown"),
    ({'label_smoothing': 1.0}, r'--config.label_smoothing=1.0 must be a finite number in \[0, 1\)'),
    ({'head': 'regression', 'label_smoothing': 0.1}, r'set it to 0 for --config.head=regression'),
    ({'data.random_erasing': 1.5}, r'--config.data.random_erasing=1.5 must be a finite number in \[0, 1\]; a prob'),
    ({'test_checkpoint': 'best'}, r"--config.test_checkpoint='best' is unknown"),
    ({'test_checkpoint': 'best_val', 'data.val_fraction': 0.0}, r'best_val picks by the validation metric'),
]


@pytest.mark.parametrize('overrides,message', INVALID)
def test_invalid_configs_are_refused_before_anything_is_written(config, data_dir, tmp_path, overrides, message):
  workdir = tmp_path / 'work'
  with pytest.raises(ConfigError, match=message):
    train.train_and_evaluate(apply_overrides(config, overrides), str(workdir), data_dir)
  assert not workdir.exists()


def test_platform_choices():
  config = load_experiment('shapes').get_config()  # microbatch_size=auto, cpu_speedups=auto, batch 128
  assert train.platform_choices(config, 1, 'cpu') == (64, True)
  assert train.platform_choices(config, 1, 'gpu') == (0, False)
  assert train.platform_choices(config, 8, 'cpu') == (0, True)  # per-device 16: the whole batch at once
  config.batch_size = 96
  assert train.platform_choices(config, 1, 'cpu') == (48, True)  # the largest divisor of 96 up to 64
  config.model.dense_norm = 'batch'
  assert train.platform_choices(config, 1, 'cpu') == (0, True)  # statistics over the whole batch
  config.model.norm, config.model.dense_norm = 'batch', 'none'
  assert train.platform_choices(config, 1, 'cpu') == (0, True)
  config.microbatch_size, config.cpu_speedups = 32, 'off'
  assert train.platform_choices(config, 1, 'tpu') == (32, False)


def _members(config, pairs):
  return [apply_overrides(config, {'seed': seed, 'optimizer.learning_rate': lr}) for seed, lr in pairs]


@pytest.mark.parametrize('optimizer,dropout,pairs', [('sgd', 0.0, [(0, 3e-3), (1, 0.01)]),
                                                     ('adam', 0.3, [(0, 1e-3), (1, 3e-3), (2, 1e-3)])])
def test_each_population_member_equals_the_solo_run_of_its_seed_and_learning_rate(config, data_dir, tmp_path,
                                                                                   optimizer, dropout, pairs):
  """Members (seeds x learning rates) with BatchNorm trained as one program on 8 devices, 50 steps with flips
  and crops: each member's final state, periodic metrics and test metrics equal its solo run's to float32
  rounding (vmap batches the convolutions, which changes the order of some sums). Three members run on a 1 x 8
  mesh, where their dropout masks are those of their solo runs on 8 devices too; two shard over a 2 x 4 mesh
  (each member's batch and BatchNorm statistics over 4 devices), with SGD at small rates: there the changed order
  of the sums grows with training (Adam at 3e-3: 2e-2 in the weights after 50 steps; SGD at 0.03: 1e-5)."""
  config.data.pipeline, config.data.augment_flip, config.data.augment_crop = 'device', True, True
  config.model.norm, config.model.dropout, config.microbatch_size = 'batch', dropout, 0
  config.optimizer.name, config.population_map = optimizer, 'vmap'  # a loop equals solo runs exactly: test_sweep.py
  config.rng_impl = 'threefry2x32'  # rbg draws differently under vmap: refused (tested below)
  config.num_train_steps, config.checkpoint_every_steps, config.eval_every_steps = 50, 50, 25
  members = _members(config, pairs)
  dirs = [str(tmp_path / f'member{i}') for i in range(len(members))]
  trained = population.train_population(members, dirs, str(tmp_path / 'population'), data_dir)
  assert trained.finished == (True,) * len(members)
  for i, (member, directory) in enumerate(zip(members, dirs, strict=True)):
    solo = train.train_and_evaluate(member, str(tmp_path / f'solo{i}'), data_dir)
    resumed = train.train_and_evaluate(member, directory, data_dir)  # finds its final checkpoint: evaluates it
    assert resumed.start_step == 50
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=2e-4, atol=2e-6), resumed.variables,
                 solo.variables)
    for key, value in solo.metrics.items():
      assert resumed.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    rows, solo_rows = _read_metrics(directory), _read_metrics(str(tmp_path / f'solo{i}'))
    assert [sorted(r) for r in rows] == [sorted(r) for r in solo_rows]  # the same rows, as a solo run writes them
    for row, solo_row in zip(rows, solo_rows, strict=True):
      for key in set(row) - {'steps_per_sec'}:
        assert row[key] == pytest.approx(solo_row[key], rel=1e-4, abs=1e-4), (row['step'], key)


def test_a_population_resumes_exactly_and_a_diverged_member_leaves_the_others_training(config, data_dir, tmp_path):
  """As if killed after the population's checkpoint of step 10: the relaunch resumes there and ends with the
  same final checkpoints, bit for bit. The member whose loss overflows is reported, and gets no final checkpoint."""
  config.data.pipeline, config.rng_impl = 'device', 'threefry2x32'
  config.optimizer.name, config.optimizer.schedule, config.optimizer.grad_clip_norm = 'sgd', 'constant', 0.0
  members = _members(config, [(0, 0.01), (1, 0.03), (0, 1e30)])
  full, resumed = tmp_path / 'full', tmp_path / 'resumed'
  dirs = [str(full / f'member{i}') for i in range(3)]
  trained = population.train_population(members, dirs, str(full / 'population'), data_dir)
  assert trained.finished == (True, True, False)
  assert not os.path.exists(os.path.join(dirs[2], 'checkpoints'))
  shutil.copytree(full, resumed)
  shutil.rmtree(resumed / 'population' / 'checkpoints' / '20')
  for i in range(3):
    shutil.rmtree(resumed / f'member{i}' / 'checkpoints', ignore_errors=True)
  again = [str(resumed / f'member{i}') for i in range(3)]
  trained = population.train_population(members, again, str(resumed / 'population'), data_dir)
  assert trained.finished == (True, True, False) and trained.start_step == 10
  for i in range(2):
    jax.tree.map(np.testing.assert_array_equal, _checkpoint(again[i], 20), _checkpoint(dirs[i], 20))
  def values(rows):
    return [{k: v for k, v in r.items() if k not in ('time', 'steps_per_sec')} for r in rows]
  assert values(_read_metrics(again[0])) == values(_read_metrics(dirs[0]))


@pytest.mark.parametrize('overrides,message', [
    ({'rng_impl': 'rbg'}, '--config.population=on needs random numbers that are the same for a member'),
    ({'data.pipeline': 'host'}, '--config.population=on trains members on the device pipeline'),
    ({'model.stride': 2}, "a population's members must differ in seed and learning rate only"),
])
def test_populations_that_cannot_equal_their_solo_runs_are_refused(config, data_dir, tmp_path, overrides, message):
  config.data.pipeline, config.rng_impl = 'device', 'threefry2x32'
  members = _members(config, [(0, 1e-3), (1, 1e-3)])
  members[-1] = apply_overrides(members[-1], overrides)
  if 'model.stride' not in overrides:
    members[0] = apply_overrides(members[0], overrides)
  with pytest.raises(ConfigError, match=message):
    population.train_population(members, [str(tmp_path / 'a'), str(tmp_path / 'b')], str(tmp_path / 'p'), data_dir)
  assert not os.listdir(tmp_path)
