"""Training: learning on shapes, the step against a plain grad + optax update, 8 devices == 1 device, exact
resume, no re-tracing, refused configs."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from cnnjax import optim, parallel, train
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
    batch = run.backend.put_batch(next(run.train_batches()))
    programs.add(run.train_step.lower(state, batch, run.keys()[1]).as_text())
  assert len(programs) == 1


def _three_steps_setup(config, data_dir):
  """The run, its fresh state and three global batches of 64 shaped [1, 64, ...]."""
  run = train.setup(config, data_dir)
  state = run.init_state(run.keys()[0])
  batches = run.train_batches(num_devices=1)
  return run, state, [next(batches) for _ in range(3)]


def _run_on_one_device(state, step, batches):
  """``step`` under pmap on a 1-device mesh, the whole batch on it: final variables (params and batch
  statistics, host copies) and the last metrics."""
  one = jax.sharding.Mesh(np.array(jax.local_devices()[:1]), (parallel.AXIS,))
  s, step_fn = parallel.replicate(state, one), jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, None))
  for batch in batches:
    s, metrics = step_fn(s, parallel.shard(batch, one), jax.random.key(1))
  return jax.tree.map(lambda x: np.asarray(parallel.local_value(x)[0]), s.variables()), metrics


def _step(run, **kwargs):
  return functools.partial(train.train_step, head=run.head, schedule=run.schedule, **kwargs)


def test_train_step_equals_a_plain_grad_and_optax_update(config, data_dir):
  """Two steps of train_step on one device against jax.grad of the mean cross-entropy and an optax update
  written here (no dropout in the tiny model; the experiment's clipping, Adam at a constant rate)."""
  config.optimizer.schedule = 'constant'
  run, state, batches = _three_steps_setup(config, data_dir)
  params = jax.tree.map(parallel.local_value, state.params)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
  opt_state = tx.init(params)

  def loss_fn(params, images, labels):
    logits = run.model.apply({'params': params}, images, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  for batch in batches[:2]:
    images, labels = batch['image'][0], batch['target'][0]
    want_loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  got, metrics = _run_on_one_device(state, _step(run, microbatch_size=0), batches[:2])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got['params'], params)
  np.testing.assert_allclose(parallel.first(metrics['loss']), want_loss, rtol=1e-5)
  np.testing.assert_allclose(parallel.first(metrics['grad_norm']), optax.global_norm(grads), rtol=1e-5)


@pytest.mark.parametrize('translate', [0, 1])
def test_eval_flip_and_translate_average_the_outputs_of_the_views(config, data_dir, translate):
  """--config.eval_flip: the loss and accuracy sums of eval_step equal those of the mean of the logits of each
  image and its left-right mirror, computed here, and differ from those of the image alone;
  --config.eval_translate=1 weighs those of the image 1/2 and of its two 1-pixel shifts 1/4 each."""
  run, state, batches = _three_steps_setup(config, data_dir)
  batch = {**batches[0], 'mask': np.ones((1, 64), bool)}
  images, labels = batch['image'][0], batch['target'][0]
  variables = state.variables(jax.tree.map(parallel.local_value, state.params))
  one = jax.sharding.Mesh(np.array(jax.local_devices()[:1]), (parallel.AXIS,))
  sums = {}
  for flip in (True, False):
    step = jax.pmap(functools.partial(train.eval_step, head=run.head, flip=flip, translate=translate),
                    axis_name=parallel.AXIS)
    sums[flip] = jax.tree.map(parallel.first, step(parallel.replicate(state, one), batch))

  def mirrored(x):
    return (run.model.apply(variables, x) + run.model.apply(variables, x[:, :, ::-1])) / 2

  logits = mirrored(images)
  if translate:
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
    logits = logits / 2 + (mirrored(padded[:, :-2, :-2]) + mirrored(padded[:, 2:, 2:])) / 4
  np.testing.assert_allclose(sums[True]['loss'], optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum(),
                             rtol=1e-5)
  assert sums[True]['accuracy'] == np.sum(np.argmax(logits, -1) == labels) and sums[True]['count'] == 64
  assert sums[True]['loss'] != sums[False]['loss']


def test_an_ema_of_the_weights_is_what_evaluation_uses(config, data_dir):
  """--config.optimizer.ema_decay: after three steps, eval_step's loss is that of the optimizer's moving average
  (optim.eval_params), not of the trained weights, which differ from it."""
  config.optimizer.ema_decay = 0.5
  run, state, batches = _three_steps_setup(config, data_dir)
  one = jax.sharding.Mesh(np.array(jax.local_devices()[:1]), (parallel.AXIS,))
  s, step_fn = parallel.replicate(state, one), jax.pmap(_step(run), axis_name=parallel.AXIS, in_axes=(0, 0, None))
  for batch in batches:
    s, _ = step_fn(s, parallel.shard(batch, one), jax.random.key(1))
  host = jax.tree.map(lambda x: np.asarray(parallel.local_value(x)[0]), s)
  ema = optim.eval_params(host.opt_state, host.params)
  assert not np.allclose(ema['block0']['kernel'], host.params['block0']['kernel'])
  batch = {**batches[0], 'mask': np.ones((1, 64), bool)}
  step = jax.pmap(functools.partial(train.eval_step, head=run.head), axis_name=parallel.AXIS)
  sums = jax.tree.map(parallel.first, step(s, batch))
  logits = run.model.apply(host.variables(ema), batch['image'][0])
  want = optax.softmax_cross_entropy_with_integer_labels(logits, batch['target'][0]).sum()
  np.testing.assert_allclose(sums['loss'], want, rtol=1e-5)


@pytest.mark.parametrize('backend,norm', [('pmap', 'none'), ('shard_map', 'none'), ('pmap', 'batch'),
                                          ('shard_map', 'batch')])
def test_eight_devices_match_one_device_on_the_same_global_batch(config, data_dir, backend, norm):
  """With BatchNorm, the statistics are averaged over the 8 devices: the same as over the whole batch."""
  config.model.norm = norm
  run, state, batches = _three_steps_setup(config, data_dir)
  initial_kernel = np.array(parallel.local_value(state.params['block0']['kernel']))  # donation may free state
  want, ref_metrics = _run_on_one_device(state, _step(run), batches)

  mapped = parallel.get_backend(backend)  # all 8 devices, 8 examples each
  s, train_fn = mapped.from_checkpoint(state), mapped.map_train_step(_step(run))
  for batch in batches:
    s, metrics = train_fn(s, mapped.put_batch(jax.tree.map(lambda x: x.reshape(8, 8, *x.shape[2:]), batch)),
                          jax.random.key(1))
  got = jax.tree.map(parallel.local_value, mapped.to_checkpoint(s).variables())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), got, want)
  np.testing.assert_allclose(parallel.first(metrics['loss']), parallel.first(ref_metrics['loss']), rtol=1e-5)
  assert not np.allclose(got['params']['block0']['kernel'], initial_kernel)  # it trained
  assert bool(got['batch_stats']) == (norm == 'batch')


@pytest.mark.parametrize('microbatch_size', [16, 32])
def test_micro_batches_give_the_whole_batch_step(config, data_dir, microbatch_size):
  run, state, batches = _three_steps_setup(config, data_dir)
  initial_kernel = np.array(parallel.local_value(state.params['block0']['kernel']))
  want, want_metrics = _run_on_one_device(state, _step(run), batches)
  got, got_metrics = _run_on_one_device(state, _step(run, microbatch_size=microbatch_size), batches)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  for k in ('loss', 'accuracy', 'grad_norm'):
    np.testing.assert_allclose(parallel.first(got_metrics[k]), parallel.first(want_metrics[k]), rtol=1e-5)
  assert not np.allclose(got['params']['block0']['kernel'], initial_kernel)  # it trained


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
  traces, original = [], train.train_step

  def counting_train_step(*args, **kwargs):
    traces.append(1)  # Python side effects run only while tracing
    return original(*args, **kwargs)

  monkeypatch.setattr(train, 'train_step', counting_train_step)
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


@pytest.mark.parametrize('norm,microbatch', [('none', 16), ('batch', 0)])  # BatchNorm refuses micro-batches
def test_cpu_speedups_and_plain_kernels_train_to_the_same_values(config, data_dir, norm, microbatch):
  """The two-step bias, NHWC/HWIO gradients and two-step BatchNorm (CPU) against the plain bias, JAX's own rules
  and flax's BatchNorm (GPU/TPU), both forced on CPU, micro-batches and all: three steps, the same parameters
  and batch statistics up to float rounding."""
  config.microbatch_size, config.model.norm = microbatch, norm
  results = {}
  for speedups in ('on', 'off'):
    config.cpu_speedups = speedups
    run, state, batches = _three_steps_setup(config, data_dir)
    assert run.cpu_speedups == (speedups == 'on') and run.microbatch_size == microbatch
    results[speedups], _ = _run_on_one_device(state, _step(run, microbatch_size=microbatch), batches)
  assert jax.tree.structure(results['on']) == jax.tree.structure(results['off'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), results['on'], results['off'])


def test_bfloat16_activations_with_float32_parameters(config, data_dir):
  """dtype=bfloat16: activations in bf16, parameters, optimizer state and loss in float32; three steps move
  the parameters as a float32 run's do (bf16 keeps 8 bits of mantissa: close, not equal)."""
  got = {}
  for dtype in ('float32', 'bfloat16'):
    config.model.dtype = dtype
    run, state, batches = _three_steps_setup(config, data_dir)
    x = batches[0]['image'][0]
    _, inter = run.model.apply(state.variables(jax.tree.map(parallel.local_value, state.params)), x,
                               capture_intermediates=True, mutable=['intermediates'])
    assert inter['intermediates']['block0']['__call__'][0].dtype == jnp.dtype(dtype)
    got[dtype], metrics = _run_on_one_device(state, _step(run), batches)
    assert np.isfinite(parallel.first(metrics['loss'])) and metrics['loss'].dtype == jnp.float32
    leaves = jax.tree.leaves(got[dtype]) + jax.tree.leaves(state.opt_state)
    assert all(x.dtype in (np.float32, np.int32) for x in leaves)
  initial = jax.tree.map(parallel.local_value, state.variables())
  moved = {k: np.concatenate([(a - b).ravel() for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(initial),
                                                                 strict=True)]) for k, v in got.items()}
  f32, bf16 = moved['float32'], moved['bfloat16']
  cosine = f32 @ bf16 / np.linalg.norm(f32) / np.linalg.norm(bf16)
  assert np.linalg.norm(f32) > 0 and cosine > 0.95, cosine
  assert abs(np.linalg.norm(bf16) / np.linalg.norm(f32) - 1) < 0.1


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
  assert train.train_population(members, dirs, str(tmp_path / 'population'), data_dir) == [True] * len(members)
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
  assert train.train_population(members, dirs, str(full / 'population'), data_dir) == [True, True, False]
  assert not os.path.exists(os.path.join(dirs[2], 'checkpoints'))
  shutil.copytree(full, resumed)
  shutil.rmtree(resumed / 'population' / 'checkpoints' / '20')
  for i in range(3):
    shutil.rmtree(resumed / f'member{i}' / 'checkpoints', ignore_errors=True)
  again = [str(resumed / f'member{i}') for i in range(3)]
  assert train.train_population(members, again, str(resumed / 'population'), data_dir) == [True, True, False]
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
    train.train_population(members, [str(tmp_path / 'a'), str(tmp_path / 'b')], str(tmp_path / 'p'), data_dir)
  assert not os.listdir(tmp_path)
