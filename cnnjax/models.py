"""Flax modules: a conv -> activation -> pool block and a CNN that stacks blocks, dense layers and a head.

Modules receive the conv, activation and pool as callables (from ``cnnjax.ops``); ``CNN`` resolves them from
the names in a ``BlockSpec``, so an ablation is a config change. ``layers`` checks the geometry of a
stack with closed-form arithmetic before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnjax import ops
from cnnjax.config import ConfigError, check_bool, check_choice, check_int, check_ints, check_number, check_str, lookup

# Named model sizes: conv features per block and dense widths before the head. 'base' is the CNN of
# flax/examples/mnist (conv32-conv64-dense256); 'tiny' is for tests; 'mlp' has no conv blocks.
VARIANTS: dict[str, dict[str, tuple[int, ...]]] = {
    'tiny': {'features': (4, 8), 'dense': (16,)},
    'small': {'features': (16, 32), 'dense': (64,)},
    'base': {'features': (32, 64), 'dense': (256,)},
    'large': {'features': (32, 64, 128), 'dense': (256,)},
    'mlp': {'features': (), 'dense': (256,)},  # no conv: the dense baseline of the parameter-count ablation
}


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """The hyper-parameters of one ConvBlock, by name (hashable, serialisable)."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: str = 'SAME'
  dilation: int = 1
  activation: str = 'relu'
  pool: str = 'max'
  pool_window: int = 2
  pool_stride: int = 2
  pool_padding: str = 'VALID'  # VALID drops a last partial window; SAME keeps it (Keras' padding='same')
  dropout: float = 0.0  # after the pool (a block without a pool has none)
  flip_kernel: bool = False
  fixed_filters: str = ''  # '' = learned; else a name for ops.fixed_filter_bank (frozen, no parameters)
  conv_impl: str = 'xla'  # ops.CONVS: how the convolution is computed (same result)
  norm: str = 'none'  # NORMS: after the conv, before the activation
  norm_groups: int = 8  # norm='group': channel groups
  norm_scale: bool = True  # False: the norm has a bias only (its scale fixed at 1, as airbench's BatchNorm)
  init: str = 'lecun_normal'  # INITS: of the learned kernel


class BatchNorm(nn.Module):
  """``flax.linen.BatchNorm`` (momentum, epsilon, axis_name, dtype and the variables ``scale``, ``bias`` and
  batch_stats ``mean``, ``var`` as there) whose training path is ``ops.batch_norm``: the same values up to
  rounding, with XLA:CPU's fast reductions (docs/performance.md). Normalises over every axis but the last."""
  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: jnp.dtype | None = None
  use_scale: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), features)
    scale = (self.param('scale', nn.initializers.ones, features, jnp.float32) if self.use_scale
             else jnp.ones(features, jnp.float32))
    bias = self.param('bias', nn.initializers.zeros, features, jnp.float32)
    dtype = x.dtype if self.dtype is None else self.dtype
    if self.use_running_average:
      return ops.normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon).astype(dtype)
    initializing = self.is_initializing()
    y, mean, var = ops.batch_norm(x, scale, bias, self.epsilon, None if initializing else self.axis_name)
    if not initializing:
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(dtype)


# Normalisation layers, by --config.model.norm: (train, groups, axis_name, dtype, cpu_speedups, use_scale) -> module
# (use_scale=False: a bias only, the scale fixed at 1). BatchNorm
# normalises over the batch and the map (statistics averaged over the devices of axis_name while training,
# running averages in eval, momentum 0.9 as in flax/examples/imagenet; flax's layer, or with cpu_speedups the
# BatchNorm above); LayerNorm over each example's map and channels; GroupNorm over each example's map and
# channel group. Each has a scale and bias per channel.
Norm = Callable[[bool], nn.Module]
NORMS: dict[str, Callable[..., nn.Module] | None] = {
    'none': None,
    'batch': lambda train, groups, axis_name, dtype=None, cpu_speedups=False, use_scale=True: (
        BatchNorm if cpu_speedups else nn.BatchNorm)(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=axis_name if train else None,
        dtype=dtype, use_scale=use_scale),
    'layer': lambda train, groups, axis_name, dtype=None, cpu_speedups=False, use_scale=True: nn.LayerNorm(
        epsilon=1e-5, reduction_axes=(-3, -2, -1), dtype=dtype, use_scale=use_scale),
    'group': lambda train, groups, axis_name, dtype=None, cpu_speedups=False, use_scale=True: nn.GroupNorm(
        num_groups=groups, epsilon=1e-5, dtype=dtype, use_scale=use_scale),
}


def dirac(base: nn.initializers.Initializer) -> nn.initializers.Initializer:
  """``base``, with the first min(C_in, C_out) filters the identity (1 at the centre tap of their own input
  channel, 0 elsewhere): such a conv passes its input through those channels at initialisation (airbench's
  ``dirac_`` of ``weight[:C_in]``). Kernels are [k, k, C_in, C_out]; k is odd."""
  def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    k, _, c_in, c_out = shape
    n = min(c_in, c_out)
    identity = jnp.zeros((k, k, c_in, n), dtype).at[k // 2, k // 2, jnp.arange(n), jnp.arange(n)].set(1)
    return base(key, shape, dtype).at[..., :n].set(identity)
  return init


# Initialisations of the learned conv kernels, by --config.model.conv_init.
INITS: dict[str, nn.initializers.Initializer] = {
    'lecun_normal': nn.initializers.lecun_normal(),
    'dirac': dirac(nn.initializers.lecun_normal()),
}


class ConvBlock(nn.Module):
  """conv -> norm -> activation -> pool, with each part a plain function or a small module.

  Attributes:
    features: output channels (ignored when ``fixed_filters`` sets the bank).
    kernel_size: square kernel side.
    conv: ``(x, kernel) -> y``, e.g. ``functools.partial(ops.conv2d, stride=2)``.
    norm: ``train -> normalisation module``, or None. A normalised conv has no bias: the norm's own bias
      takes its place.
    add_bias: ``(y, bias) -> y + bias``, e.g. ``ops.add_bias``.
    activation: elementwise function.
    pool: ``x -> pooled x`` or None for no pooling.
    dropout: the rate of a dropout after the pool (training only; ignored without a pool).
    fixed_filters: if set, the kernel is the frozen ``ops.fixed_filter_bank`` of that name and has no bias.
    kernel_init: the learned kernel's initialiser (INITS).
  """
  features: int
  kernel_size: int = 3
  conv: Callable[[jax.Array, jax.Array], jax.Array] = ops.conv2d
  norm: Norm | None = None
  add_bias: Callable[[jax.Array, jax.Array], jax.Array] = ops.add_bias
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  pool: Callable[[jax.Array], jax.Array] | None = ops.max_pool
  dropout: float = 0.0
  fixed_filters: str = ''
  kernel_init: nn.initializers.Initializer = INITS['lecun_normal']

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.fixed_filters:
      kernel = jnp.asarray(ops.fixed_filter_bank(self.fixed_filters, x.shape[-1], self.kernel_size), x.dtype)
      y = self.conv(x, kernel)
    else:
      k = self.kernel_size
      kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features))
      y = self.conv(x, kernel.astype(x.dtype))
      if self.norm is None:
        y = self.add_bias(y, self.param('bias', nn.initializers.zeros_init(), (self.features,)).astype(x.dtype))
    if self.norm is not None:
      y = self.norm(train)(y)
    y = self.activation(y)
    if self.pool is None:
      return y
    return nn.Dropout(self.dropout, deterministic=not train)(self.pool(y))


def make_block(spec: BlockSpec, name: str | None = None, axis_name: str | None = None, cpu_speedups: bool = False,
               dtype: jnp.dtype = jnp.float32) -> ConvBlock:
  """Builds a ConvBlock whose callables are resolved from the names in ``spec``.

  BatchNorm averages its statistics over the devices of ``axis_name`` while training; ``cpu_speedups`` picks
  XLA:CPU's faster forms of the same values (two-step bias broadcast, NHWC/HWIO conv gradients, BatchNorm's
  reductions, max pooling's per-element gradient); norms compute in ``dtype``.
  """
  pool, norm = ops.get_pool(spec.pool), NORMS[spec.norm]
  conv_kwargs = {'cpu_speedups': cpu_speedups} if spec.conv_impl == 'xla' else {}  # im2col's are matmuls
  pool_kwargs = {'cpu_speedups': cpu_speedups} if spec.pool == 'max' else {}
  return ConvBlock(
      features=spec.features, kernel_size=spec.kernel_size, name=name, fixed_filters=spec.fixed_filters,
      kernel_init=INITS[spec.init], dropout=spec.dropout,
      conv=functools.partial(ops.get_conv(spec.conv_impl), stride=spec.stride, padding=spec.padding,
                             dilation=spec.dilation, flip_kernel=spec.flip_kernel, **conv_kwargs),
      norm=None if norm is None else functools.partial(norm, groups=spec.norm_groups, axis_name=axis_name,
                                                       dtype=dtype, cpu_speedups=cpu_speedups,
                                                       use_scale=spec.norm_scale),
      add_bias=functools.partial(ops.add_bias, cpu_speedups=cpu_speedups),
      activation=ops.get_activation(spec.activation),
      pool=None if pool is None else functools.partial(pool, window=spec.pool_window, stride=spec.pool_stride,
                                                       padding=spec.pool_padding, **pool_kwargs))


class CNN(nn.Module):
  """Conv blocks (resolution falls, feature maps grow), then dense layers, then a linear output layer.

  The output is raw (logits or values); the task head in ``cnnjax.heads`` turns it into a loss.
  With no blocks this is a plain MLP, the dense baseline of the parameter-count ablation.
  """
  blocks: Sequence[BlockSpec]
  dense: Sequence[int] = ()
  num_outputs: int = 10
  dense_activation: str = 'relu'
  dropout: float = 0.0
  dense_norm: str = 'none'  # DENSE_NORMS: after each hidden dense layer's activation, before its dropout
  dtype: jnp.dtype = jnp.float32  # of the activations; parameters stay float32, the output is float32
  axis_name: str | None = None  # the device axis BatchNorm averages its statistics over while training
  cpu_speedups: bool = False  # XLA:CPU's faster forms of the same values (see make_block)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.astype(self.dtype)
    for i, spec in enumerate(self.blocks):
      x = make_block(spec, f'block{i}', self.axis_name, self.cpu_speedups, self.dtype)(x, train)
    x = x.reshape((x.shape[0], -1))
    act = ops.get_activation(self.dense_activation)
    for i, width in enumerate(self.dense):
      x = act(nn.Dense(width, dtype=self.dtype, name=f'dense{i}')(x))
      if self.dense_norm != 'none':
        x = NORMS[self.dense_norm](train, 1, self.axis_name, self.dtype, self.cpu_speedups)(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, dtype=self.dtype, name='output')(x).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------------------
# From a config.

def conv_features(model_config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Conv widths per block: ``config.model.features``, or the variant's when it is ()."""
  return tuple(model_config.features) or lookup('model.variant', model_config.variant, VARIANTS)['features']


def dense_widths(model_config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Dense widths before the output layer: ``config.model.dense``, or the variant's when it is ()."""
  return tuple(model_config.dense) or lookup('model.variant', model_config.variant, VARIANTS)['dense']


def batch_normed(model_config: ml_collections.ConfigDict) -> bool:
  """Whether any layer is BatchNorm (after the convs or the hidden dense layers), whose statistics are over the
  whole per-device batch: a micro-batch split would change them."""
  return 'batch' in (model_config.norm, model_config.dense_norm)


def kernel_sizes(model_config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Kernel sides per block: ``config.model.kernel_sizes``, or ``kernel_size`` for every block when it is ()."""
  return tuple(model_config.kernel_sizes) or (model_config.kernel_size,) * len(conv_features(model_config))


def pooled(model_config: ml_collections.ConfigDict, block: int) -> bool:
  """Whether ``block`` is followed by pooling: it is listed in ``config.model.pool_blocks``, or that is ()."""
  return not model_config.pool_blocks or block in model_config.pool_blocks


def block_specs(model_config: ml_collections.ConfigDict) -> tuple[BlockSpec, ...]:
  """The blocks of ``config.model``: per-block features and kernel sides, shared scalar settings, pooling
  (and the dropout after it) where ``pool_blocks`` says, fixed filters first."""
  first = model_config.first_layer
  return tuple(
      BlockSpec(features=f, kernel_size=k, stride=model_config.stride,
                padding=str(model_config.padding), dilation=model_config.dilation,
                activation=model_config.activation, pool=model_config.pool if pooled(model_config, i) else 'none',
                pool_window=model_config.pool_window, pool_stride=model_config.pool_stride,
                pool_padding=model_config.pool_padding, dropout=model_config.block_dropout,
                flip_kernel=model_config.flip_kernel, fixed_filters='' if (i or first == LEARNED) else first,
                conv_impl=model_config.conv_impl, norm=model_config.norm, norm_groups=model_config.norm_groups,
                norm_scale=model_config.norm_scale, init=model_config.conv_init)
      for i, (f, k) in enumerate(zip(conv_features(model_config), kernel_sizes(model_config), strict=True)))


def build_model(model_config: ml_collections.ConfigDict, num_outputs: int, axis_name: str | None = None,
                cpu_speedups: bool = False) -> CNN:
  """The CNN described by ``config.model`` with ``num_outputs`` outputs; BatchNorm (if any) averages its
  training statistics over the devices of ``axis_name``; ``cpu_speedups``: see ``make_block``."""
  return CNN(blocks=block_specs(model_config), dense=dense_widths(model_config), num_outputs=num_outputs,
             dense_activation=model_config.activation, dropout=model_config.dropout,
             dense_norm=model_config.dense_norm, dtype=jnp.dtype(model_config.dtype), axis_name=axis_name,
             cpu_speedups=cpu_speedups)


DTYPES = ('float32', 'bfloat16', 'float16')  # config.model.dtype: the activations' (parameters stay float32)
DENSE_NORMS = ('none', 'batch')  # config.model.dense_norm
POOL_PADDINGS = ('VALID', 'SAME')  # config.model.pool_padding


LEARNED = 'learned'  # config.model.first_layer: a learned first conv; else an ops.FIXED_FILTERS name


def validate(model_config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> None:
  """Raises ConfigError naming the ``--config.model.*`` flag for settings that cannot build a model on
  images of ``image_shape``, including a stack whose geometry does not fit (pure: closed forms only)."""
  check_choice('model.variant', model_config.variant, VARIANTS)
  for flag in ('kernel_size', 'stride', 'dilation', 'pool_window', 'pool_stride', 'norm_groups'):
    check_int(f'model.{flag}', model_config[flag], 1)
  check_ints('model.features', model_config.features, 1, '(32,64)')
  check_ints('model.dense', model_config.dense, 1, '(256,)')
  _check_per_block(model_config)
  sizes = kernel_sizes(model_config)
  check_bool('model.flip_kernel', model_config.flip_kernel)
  check_bool('model.norm_scale', model_config.norm_scale)
  check_choice('model.conv_init', model_config.conv_init, INITS)
  if model_config.conv_init == 'dirac' and any(k % 2 == 0 for k in sizes):
    raise ConfigError(f'--config.model.conv_init=dirac needs odd kernel sides (a centre tap), got {sizes} '
                      '(--config.model.kernel_size, --config.model.kernel_sizes)')
  check_str('model.padding', model_config.padding)
  check_choice('model.activation', model_config.activation, ops.ACTIVATIONS)
  check_choice('model.pool', model_config.pool, ops.POOLS)
  check_choice('model.conv_impl', model_config.conv_impl, ops.CONVS)
  try:
    ops.parse_padding(model_config.padding)
  except ValueError as e:
    raise ConfigError(f'--config.model.padding={model_config.padding!r}: {e}') from None
  first = model_config.first_layer
  check_choice('model.first_layer', first, (LEARNED, *ops.FIXED_FILTERS))
  size = ops.FIXED_FILTERS[first].size if first != LEARNED else None
  if size is not None and sizes and sizes[0] != size:
    raise ConfigError(f'--config.model.first_layer={first!r} needs a first kernel side of {size}, got {sizes[0]} '
                      '(--config.model.kernel_size, --config.model.kernel_sizes)')
  check_number('model.dropout', model_config.dropout, 0, 1, high_open=True)
  check_number('model.block_dropout', model_config.block_dropout, 0, 1, high_open=True)
  check_choice('model.norm', model_config.norm, NORMS)
  check_choice('model.dense_norm', model_config.dense_norm, DENSE_NORMS)
  check_choice('model.pool_padding', model_config.pool_padding, POOL_PADDINGS)
  check_choice('model.dtype', model_config.dtype, DTYPES)
  if model_config.norm == 'group':
    bad = [f for f in conv_features(model_config) if f % model_config.norm_groups]
    if bad:
      raise ConfigError(f'--config.model.norm_groups={model_config.norm_groups} must divide every conv width; '
                        f'{bad} of {conv_features(model_config)} are not multiples of it')
  layers(block_specs(model_config), image_shape)


def _check_per_block(model_config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError unless ``kernel_sizes`` has one side per block (or none) and ``pool_blocks`` names
  blocks that exist (counted from 0)."""
  blocks = len(conv_features(model_config))
  check_ints('model.kernel_sizes', model_config.kernel_sizes, 1, '(5,5,3)')
  check_ints('model.pool_blocks', model_config.pool_blocks, 0, '(1,3)')
  if model_config.kernel_sizes and len(model_config.kernel_sizes) != blocks:
    raise ConfigError(f'--config.model.kernel_sizes={tuple(model_config.kernel_sizes)} needs one side per conv '
                      f'block ({blocks}), or () for --config.model.kernel_size everywhere')
  missing = [b for b in model_config.pool_blocks if b >= blocks]
  if missing:
    raise ConfigError(f'--config.model.pool_blocks={tuple(model_config.pool_blocks)} names blocks {missing} of '
                      f'a model with {blocks} (counted from 0)')


@dataclasses.dataclass(frozen=True)
class Layer:
  """One conv or pool of a stack, with its window and its output shape worked out in closed form."""
  name: str  # 'block{i}.conv' or 'block{i}.pool'
  kind: str  # 'conv' or 'pool'
  window: int
  stride: int
  dilation: int
  fixed: bool  # a frozen filter bank (no parameters)
  norm: str  # the normalisation after a conv (NORMS), 'none' for pools
  input_shape: tuple[int, int, int]
  output_shape: tuple[int, int, int]


def layers(blocks: Sequence[BlockSpec], image_shape: tuple[int, int, int]) -> list[Layer]:
  """The convs and pools of a stack in order, each with its closed-form output shape (H, W, C).

  Raises:
    ConfigError naming the layer and the sizes if a kernel or window is larger than its padded input (the only
    way an output could fall below 1x1; ``validate`` has refused strides below 1).
  """
  result = []
  h, w, c = image_shape
  for i, b in enumerate(blocks):
    c_out = ops.fixed_filter_bank(b.fixed_filters, c, b.kernel_size).shape[-1] if b.fixed_filters else b.features
    for kind, k, s, p, d in (('conv', b.kernel_size, b.stride, b.padding, b.dilation),
                             ('pool', b.pool_window, b.pool_stride, b.pool_padding, 1)):
      if kind == 'pool' and ops.get_pool(b.pool) is None:
        continue
      name = f'block{i}.{kind}'
      padding = ops.parse_padding(p)
      k_eff = ops.dilated_size(k, d)
      if padding != 'SAME':
        pad = 0 if padding == 'VALID' else padding[0][0] + padding[0][1]
        if k_eff > min(h, w) + pad:
          raise ConfigError(f'{name}: {kind} window {k_eff}x{k_eff} is larger than its padded input '
                            f'{h + pad}x{w + pad} (input {h}x{w}); use fewer blocks, less pooling, more padding '
                            'or a larger --config.data.image_size')
      out = (ops.conv_output_size(h, k, s, p, d), ops.conv_output_size(w, k, s, p, d), c_out)  # >= 1: it fits
      norm = b.norm if kind == 'conv' else 'none'
      result.append(Layer(name, kind, k, s, d, bool(b.fixed_filters), norm, (h, w, c), out))
      h, w, c = out
  return result


def count_params(model: CNN, image_shape: tuple[int, ...]) -> int:
  """Number of trainable parameters, from shapes alone (``jax.eval_shape``, no FLOPs spent)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))
