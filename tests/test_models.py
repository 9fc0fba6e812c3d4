"""Module shapes and parameter counts against numbers worked out by hand; geometry errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import analysis, models, ops, train
from cnnjax.config import ConfigError, apply_overrides


def _params(model, shape):
  return model.init(jax.random.key(0), jnp.zeros((1, *shape)))['params']


def _count(params):
  return sum(x.size for x in jax.tree.leaves(params))


def test_tiny_parameter_count_by_hand(config):
  # 32x32x3 -> conv3x3x4 (3*3*3*4 + 4 = 112) -> pool 16x16x4 -> conv3x3x8 (3*3*4*8 + 8 = 296) -> pool 8x8x8
  # -> flatten 512 -> dense16 (512*16 + 16 = 8208) -> output6 (16*6 + 6 = 102): 8718 in all.
  model = models.build_model(config.model, num_outputs=6)
  params = _params(model, (32, 32, 3))
  assert {k: _count(v) for k, v in params.items()} == {'block0': 112, 'block1': 296, 'dense0': 8208, 'output': 102}
  assert models.count_params(model, (32, 32, 3)) == 8718


def test_small_parameter_count_by_hand(config):
  # 3*3*3*16+16 = 448; 3*3*16*32+32 = 4640; (8*8*32)*64+64 = 131136; 64*6+6 = 390.
  config.model.variant = 'small'
  assert models.count_params(models.build_model(config.model, 6), (32, 32, 3)) == 448 + 4640 + 131136 + 390


# Flattened size after the two tiny blocks on 32x32, worked by hand: SAME conv gives ceil(n/s), 2x2 pool floor(n/2).
FLAT = {(1, 'max'): 8 * 8 * 8, (1, 'avg'): 8 * 8 * 8, (1, 'none'): 32 * 32 * 8,  # 32-32-16-16-8  | 32-32-32
        (2, 'max'): 2 * 2 * 8, (2, 'avg'): 2 * 2 * 8, (2, 'none'): 8 * 8 * 8,  # 32-16-8-4-2     | 32-16-8
        (3, 'max'): 1 * 1 * 8, (3, 'avg'): 1 * 1 * 8, (3, 'none'): 4 * 4 * 8}  # 32-11-5-2-1     | 32-11-4


@pytest.mark.parametrize('stride,pool', sorted(FLAT))
def test_stride_and_pool_shapes_and_params(config, stride, pool):
  config.model.stride, config.model.pool = stride, pool
  model = models.build_model(config.model, num_outputs=6)
  params = _params(model, (32, 32, 3))
  assert params['dense0']['kernel'].shape == (FLAT[stride, pool], 16)
  assert _count(params) == 112 + 296 + FLAT[stride, pool] * 16 + 16 + 102
  assert model.apply({'params': params}, jnp.zeros((5, 32, 32, 3))).shape == (5, 6)
  h, w, c = models.layers(models.block_specs(config.model), (32, 32, 3))[-1].output_shape
  assert h * w * c == FLAT[stride, pool]


def test_block_output_matches_conv_output_size():
  block = models.ConvBlock(features=5, kernel_size=4, conv=lambda x, k: ops.conv2d(x, k, stride=2, padding=1),
                           pool=None)
  y, _ = block.init_with_output(jax.random.key(0), jnp.zeros((2, 17, 17, 3)))
  assert y.shape == (2, 8, 8, 5)  # floor((17 + 2 - 4) / 2) + 1 = 8


def test_seed_224_block_with_2x2_pool_gives_112():
  spec = models.BlockSpec(features=1, kernel_size=3, padding='SAME')
  layers = models.layers([spec], (224, 224, 3))
  assert [(x.name, x.output_shape) for x in layers] == [('block0.conv', (224, 224, 1)), ('block0.pool', (112, 112, 1))]


@pytest.mark.parametrize('bank,channels', [('gaussian', 1), ('sobel', 2), ('gaussian_sobel', 3)])
def test_fixed_first_layer_has_no_parameters(config, bank, channels):
  config.model.first_layer = bank
  model = models.build_model(config.model, num_outputs=6)
  params = _params(model, (32, 32, 3))
  assert 'block0' not in params
  assert params['block1']['kernel'].shape == (3, 3, channels, 8)


def test_gaussian_first_layer_keeps_a_constant_image_constant():
  block = models.ConvBlock(features=0, kernel_size=5, fixed_filters='gaussian', pool=None,
                           activation=ops.identity)
  y, variables = block.init_with_output(jax.random.key(0), jnp.full((1, 9, 9, 3), 0.7))
  assert not variables
  np.testing.assert_allclose(y, 0.7, rtol=1e-5)  # VALID conv: every output sees only the constant


def test_too_many_pools_for_the_image_names_the_layer(config):
  config.model.features = (4, 4, 4, 4)
  with pytest.raises(ConfigError, match=r'block3\.pool: .*1x1'):
    models.layers(models.block_specs(config.model), (8, 8, 1))


def test_kernel_larger_than_padded_input_names_the_layer(config):
  config.model.padding, config.model.kernel_size = 'VALID', 5
  with pytest.raises(ConfigError, match=r'block1\.conv: conv window 5x5 is larger than its padded input 4x4'):
    models.layers(models.block_specs(config.model), (12, 12, 3))  # 12 -conv5-> 8 -pool-> 4 < 5


@pytest.mark.parametrize('flag,value', [('stride', 0), ('kernel_size', 0), ('pool_stride', -1)])
def test_non_positive_sizes_name_the_flag(config, flag, value):
  config.model[flag] = value
  with pytest.raises(ConfigError, match=f'--config.model.{flag}={value}'):
    models.validate(config.model, (32, 32, 3))


def test_small_parameter_count_with_a_norm_by_hand(config):
  # A normalised conv has no bias; its norm has a scale and a bias per channel: 3*3*3*16 + 2*16 = 464 and
  # 3*3*16*32 + 2*32 = 4672; the dense layers as before (131136 + 390).
  config.model.variant = 'small'
  want = 464 + 4672 + 131136 + 390
  for norm in ('batch', 'layer', 'group'):
    config.model.norm = norm
    assert models.count_params(models.build_model(config.model, 6), (32, 32, 3)) == want
    assert analysis.totals(analysis.analyze(config.model, (32, 32, 3), 6))['params'] == want


def _normalised(norm, x, cpu_speedups=False):
  """A ConvBlock conv -> norm (identity activation, no pool); its variables and the conv output alone."""
  block = models.ConvBlock(features=4, kernel_size=3, conv=functools.partial(ops.conv2d, padding='SAME'),
                           norm=functools.partial(models.NORMS[norm], groups=2, axis_name=None,
                                                  cpu_speedups=cpu_speedups),
                           activation=ops.identity, pool=None)
  variables = block.init(jax.random.key(0), x)
  return block, variables, np.asarray(ops.conv2d(x, variables['params']['kernel'], padding='SAME'), np.float64)


@pytest.mark.parametrize('norm,axes,cpu_speedups', [('batch', (0, 1, 2), False), ('batch', (0, 1, 2), True),
                                                   ('layer', (1, 2, 3), False), ('group', (1, 2, 4), False)])
def test_norms_against_a_hand_computation(norm, axes, cpu_speedups):
  """flax's norms, and the CPU BatchNorm (``models.BatchNorm``), against numpy."""
  x = jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, size=(5, 6, 6, 3)), jnp.float32)
  block, variables, conv = _normalised(norm, x, cpu_speedups)
  y, updates = block.apply(variables, x, train=True, mutable=['batch_stats'])
  grouped = conv.reshape(5, 6, 6, 2, 2)  # [N, H, W, groups, channels per group], for 'group'
  z = grouped if norm == 'group' else conv
  mean, var = z.mean(axis=axes, keepdims=True), z.var(axis=axes, keepdims=True)
  want = ((z - mean) / np.sqrt(var + 1e-5)).reshape(conv.shape)  # scale 1, bias 0 at initialisation
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
  if norm == 'batch':  # running averages with momentum 0.9 from mean 0 and variance 1; used in eval
    stats = updates['batch_stats']['BatchNorm_0']
    np.testing.assert_allclose(stats['mean'], 0.1 * mean.reshape(-1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * var.reshape(-1), rtol=1e-4)
    y_eval = block.apply({**variables, **updates}, x, train=False)
    want_eval = (conv - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + 1e-5)
    np.testing.assert_allclose(y_eval, want_eval, rtol=1e-4, atol=1e-4)
  else:
    assert not updates  # layer and group norms keep no statistics


@pytest.mark.parametrize('overrides,message', [
    ({'model.norm': 'instance'}, r"--config.model.norm='instance' is unknown"),
    ({'model.norm': 'group', 'model.norm_groups': 3}, r'--config.model.norm_groups=3 must divide every conv width'),
    ({'model.norm': 'batch', 'microbatch_size': 4}, r'BatchNorm .* batch of 8, .* set --config.microbatch_size=0'),
    ({'model.dense_norm': 'batch', 'microbatch_size': 4}, r'BatchNorm .* batch of 8, .*set --config.microbatch_size=0'),
])
def test_norm_settings_that_cannot_train_are_refused(config, overrides, message):
  with pytest.raises(ConfigError, match=message):
    train.validate(apply_overrides(config, overrides), 8)


def test_dirac_init_passes_the_input_through_its_first_channels():
  """A 3x3 SAME conv whose first min(C_in, C_out) filters are the identity returns its input there, by hand."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 7, 3)), jnp.float32)
  for features in (5, 2):  # more outputs than inputs, and fewer
    block = models.ConvBlock(features=features, kernel_size=3, conv=functools.partial(ops.conv2d, padding='SAME'),
                             activation=ops.identity, pool=None, kernel_init=models.INITS['dirac'])
    y, variables = block.init_with_output(jax.random.key(0), x)
    n = min(3, features)
    np.testing.assert_allclose(y[..., :n], x[..., :n], rtol=1e-6, atol=1e-6)  # bias 0 at initialisation
    kernel = variables['params']['kernel']
    assert np.count_nonzero(kernel[..., :n]) == n  # one tap each, the centre of its own channel
    assert np.count_nonzero(kernel[..., n:]) == kernel[..., n:].size  # the rest as lecun_normal draws it


def test_dirac_init_needs_an_odd_kernel(config):
  config.model.conv_init, config.model.kernel_size = 'dirac', 4
  with pytest.raises(ConfigError, match=r'--config.model.conv_init=dirac needs odd kernel sides .* got \(4, 4\)'):
    models.validate(config.model, (32, 32, 3))


@pytest.mark.parametrize('norm', ['batch', 'layer', 'group'])
def test_a_norm_without_scale_has_a_bias_only(config, norm):
  # The small CNN normalised, with one parameter (a bias) per conv channel in its norms: 3*3*3*16 + 16 = 448 and
  # 3*3*16*32 + 32 = 4640, the dense layers as before (131136 + 390).
  config.model.variant, config.model.norm, config.model.norm_scale = 'small', norm, False
  model = models.build_model(config.model, 6)
  want = 448 + 4640 + 131136 + 390
  assert models.count_params(model, (32, 32, 3)) == want
  assert analysis.totals(analysis.analyze(config.model, (32, 32, 3), 6))['params'] == want


@pytest.mark.parametrize('cpu_speedups', [False, True])
def test_batch_norm_without_scale_against_a_hand_computation(cpu_speedups):
  """(z - mean) / sqrt(var + eps) + bias, with a non-zero bias, and no scale to learn."""
  x = jnp.asarray(np.random.default_rng(1).normal(1.0, 2.0, size=(5, 6, 6, 3)), jnp.float32)
  block = models.ConvBlock(features=4, kernel_size=3, conv=functools.partial(ops.conv2d, padding='SAME'),
                           norm=functools.partial(models.NORMS['batch'], groups=2, axis_name=None,
                                                  cpu_speedups=cpu_speedups, use_scale=False),
                           activation=ops.identity, pool=None)
  variables = block.init(jax.random.key(0), x)
  assert set(variables['params']['BatchNorm_0']) == {'bias'}
  bias = np.arange(4, dtype=np.float32) - 1.5
  variables['params']['BatchNorm_0']['bias'] = jnp.asarray(bias)
  y, _ = block.apply(variables, x, train=True, mutable=['batch_stats'])
  z = np.asarray(ops.conv2d(x, variables['params']['kernel'], padding='SAME'), np.float64)
  want = (z - z.mean(axis=(0, 1, 2))) / np.sqrt(z.var(axis=(0, 1, 2)) + 1e-5) + bias
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Per-block kernels and pooling, dropout after a pool, a norm after the dense layers: the published models of
# experiments/fashion_mnist_table.py as configs.

def _table_point(name):
  from cnnjax.cli import load_experiment
  experiment = load_experiment('fashion_mnist_table')
  point = next(p for p in experiment.get_sweep() if p['name'] == name)
  return apply_overrides(experiment.get_config(), point)


@pytest.mark.parametrize('name, want', [
    # khanguyen1207's notebook (its Keras summary: 1,694,186 trainable): 5*5*1*32+32 = 832; 5*5*32*32+32 = 25632;
    # pool 14; 3*3*32*64+64 = 18496; 3*3*64*64+64 = 36928; pool 7; 7*7*64*512+512 = 1606144; BatchNorm(512)'s
    # scale and bias 1024; 512*10+10 = 5130.
    ('bn_4conv_source', 832 + 25632 + 18496 + 36928 + 1606144 + 1024 + 5130),
    # umbertogriffo's model: 5*5*1*32+32 = 832; 5*5*32*64+64 = 51264; 1*1*64*128+128 = 8320; 'same' pools
    # 28-14-7-4; 4*4*128*1024+1024 = 2098176; 1024*512+512 = 524800; 512*10+10 = 5130.
    ('keras_3conv_pool_2fc_dropout', 832 + 51264 + 8320 + 2098176 + 524800 + 5130)])
def test_the_published_models_parameter_counts_by_hand(name, want):
  config = _table_point(name)
  models.validate(config.model, (28, 28, 1))
  assert want in (1_694_186, 2_688_522)
  assert models.count_params(models.build_model(config.model, 10), (28, 28, 1)) == want
  assert analysis.totals(analysis.analyze(config.model, (28, 28, 1), 10))['params'] == want


def test_same_pooling_keeps_the_last_partial_window():
  """A 2x2 'SAME' pool of 3x3 is 2x2 (the last row and column pooled alone); 'VALID' drops them (1x1)."""
  x = jnp.arange(9, dtype=jnp.float32).reshape(1, 3, 3, 1) * jnp.array([1, -1, 1, -1, 1, -1, 1, -1, 1]).reshape(
      1, 3, 3, 1)  # [[0, -1, 2], [-3, 4, -5], [6, -7, 8]]
  np.testing.assert_array_equal(ops.max_pool(x, 2, padding='SAME')[0, ..., 0], [[4, 2], [6, 8]])
  np.testing.assert_array_equal(ops.max_pool(x, 2)[0, ..., 0], [[4]])
  spec = models.BlockSpec(features=1, pool_padding='SAME')
  assert [layer.output_shape for layer in models.layers([spec] * 2, (7, 7, 1))][-1] == (2, 2, 1)  # 7-4-2
  assert [layer.output_shape for layer in models.layers([spec], (7, 7, 1))][-1] == (4, 4, 1)


def test_pool_blocks_pool_after_the_named_blocks_only(config):
  config.model.features, config.model.kernel_sizes, config.model.pool_blocks = (4, 4, 8, 8), (5, 5, 3, 3), (1, 3)
  stack = models.layers(models.block_specs(config.model), (32, 32, 3))
  assert [(layer.name, layer.window, layer.output_shape) for layer in stack] == [
      ('block0.conv', 5, (32, 32, 4)), ('block1.conv', 5, (32, 32, 4)), ('block1.pool', 2, (16, 16, 4)),
      ('block2.conv', 3, (16, 16, 8)), ('block3.conv', 3, (16, 16, 8)), ('block3.pool', 2, (8, 8, 8))]
  params = _params(models.build_model(config.model, 6), (32, 32, 3))
  assert [params[f'block{i}']['kernel'].shape[0] for i in range(4)] == [5, 5, 3, 3]


def test_block_dropout_follows_each_pool_in_training_only(config):
  """At a rate near 1 every pooled activation is dropped: with no dense layers, the output is the output layer's
  bias in training, and not in evaluation."""
  config.model.features, config.model.dense, config.model.block_dropout = (4,), (), 1 - 1e-7
  model = models.build_model(config.model, 6)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  variables = model.init(jax.random.key(0), x)
  variables['params']['output']['bias'] = jnp.arange(6.0)
  trained = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(2)})
  np.testing.assert_array_equal(trained, np.broadcast_to(np.arange(6.0), (2, 6)))
  assert not np.allclose(model.apply(variables, x), np.arange(6.0))


@pytest.mark.parametrize('cpu_speedups', [False, True])
def test_dense_norm_against_a_hand_computation(config, cpu_speedups):
  """An MLP whose hidden layer is normalised after its ReLU: (h - mean) / sqrt(var + eps) * 1 + 0 over the batch,
  then the output layer; a scale and a bias per hidden unit."""
  config.model.variant, config.model.features, config.model.dense, config.model.dense_norm = 'mlp', (), (5,), 'batch'
  model = models.build_model(config.model, 3, cpu_speedups=cpu_speedups)
  x = jax.random.normal(jax.random.key(1), (8, 2, 2, 1))
  variables = model.init(jax.random.key(0), x)
  assert _count(variables['params']) == (4 * 5 + 5) + 2 * 5 + (5 * 3 + 3)
  y, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])
  h = np.maximum(np.asarray(x, np.float64).reshape(8, 4) @ p['dense0']['kernel'] + p['dense0']['bias'], 0)
  h = (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + 1e-5)
  np.testing.assert_allclose(y, h @ p['output']['kernel'] + p['output']['bias'], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('overrides, message', [
    ({'model.kernel_sizes': (5, 3, 3)}, r'kernel_sizes=\(5, 3, 3\) needs one side per conv block \(2\)'),
    ({'model.pool_blocks': (0, 2)}, r'pool_blocks=\(0, 2\) names blocks \[2\] of a model with 2'),
    ({'model.pool_padding': 'same'}, r'pool_padding=.same. is unknown'),
    ({'model.dense_norm': 'layer'}, r'dense_norm=.layer. is unknown'),
    ({'model.kernel_sizes': (5, 4), 'model.conv_init': 'dirac'}, r'dirac needs odd kernel sides .*, got \(5, 4\)'),
    ({'model.kernel_sizes': (5, 3), 'model.first_layer': 'sobel'}, r'needs a first kernel side of 3, got 5'),
    ({'model.block_dropout': 1.0}, r'block_dropout=1.0 must be a finite number in \[0, 1\)')])
def test_per_block_settings_are_refused_in_one_line(config, overrides, message):
  with pytest.raises(ConfigError, match=message):
    models.validate(apply_overrides(config, overrides).model, (32, 32, 3))
