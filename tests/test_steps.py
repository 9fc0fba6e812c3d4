"""The pure steps: one train step against a plain grad and an optax update, evaluation's views, the EMA, 8
devices against 1 on the same global batch, micro-batches against the whole batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import augment, optim, parallel, steps, train


def _three_steps_setup(config, data_dir):
  """The run, its fresh state and three global batches of 64 shaped [1, 64, ...], normalised as the host
  pipeline's step does (the config augments nothing)."""
  run = train.setup(config, data_dir)
  state = run.init_state(run.keys()[0])
  normalize = augment.preprocessing(config.data, run.spec)[0].normalize
  batches = [run.pipeline.batch(step, rows=(1, 0, 1)) for step in range(3)]  # the whole batch on one device
  return run, state, [{'image': np.asarray(normalize(b['image'])), 'target': b['target']} for b in batches]


def _run_on_one_device(state, step, batches):
  """``step`` under pmap on a 1-device mesh, the whole batch on it: final variables (params and batch
  statistics, host copies) and the last metrics."""
  one = jax.sharding.Mesh(np.array(jax.local_devices()[:1]), (parallel.AXIS,))
  s, step_fn = parallel.replicate(state, one), jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, None))
  for batch in batches:
    s, metrics = step_fn(s, parallel.shard(batch, one), jax.random.key(1))
  return jax.tree.map(lambda x: np.asarray(parallel.local_value(x)[0]), s.variables()), metrics


def _step(run, **kwargs):
  return functools.partial(steps.train_step, head=run.head, schedule=run.schedule, **kwargs)


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
    step = jax.pmap(functools.partial(steps.eval_step, head=run.head, flip=flip, translate=translate),
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
  step = jax.pmap(functools.partial(steps.eval_step, head=run.head), axis_name=parallel.AXIS)
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
