"""cnnjax.ops against independent references: scipy.signal, numpy and closed forms."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from cnnjax import ops


def _single(x):  # [H, W] -> [1, H, W, 1]
  return jnp.asarray(x, jnp.float32)[None, :, :, None]


CONVS = sorted(ops.CONVS)


@pytest.mark.parametrize('impl', CONVS)
@pytest.mark.parametrize('n,k', [(7, 3), (10, 4), (5, 5), (12, 2)])
def test_true_convolution_equals_scipy_convolve2d(n, k, impl):
  rng = np.random.default_rng(n * k)
  x, w = rng.normal(size=(n, n)), rng.normal(size=(k, k))
  for mode, padding in (('valid', 'VALID'), ('full', k - 1)):
    got = ops.CONVS[impl](_single(x), _single(w).reshape(k, k, 1, 1), padding=padding, flip_kernel=True)
    np.testing.assert_allclose(got[0, :, :, 0], scipy.signal.convolve2d(x, w, mode=mode), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('k,stride,padding,dilation', [
    (3, 1, 'SAME', 1), (4, 2, 'SAME', 1), (3, 3, 'VALID', 1), (3, 1, 2, 2), (2, 2, 'SAME', 2),
    (5, 3, [(0, 2), (1, 0)], 1),  # asymmetric padding; stride 3 leaves input rows no window reads
])
def test_conv_gradients_equal_jax_transpose_rules(k, stride, padding, dilation):
  """ops.conv2d's custom VJP against autodiff of lax.conv_general_dilated with JAX's own transpose rules."""
  rng = np.random.default_rng(k * stride)
  x = jnp.asarray(rng.normal(size=(2, 11, 9, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)

  def reference(x, w, stride, padding, dilation):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ops.parse_padding(padding),
                                        rhs_dilation=(dilation, dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, stride, padding, dilation)))

  custom = functools.partial(ops.conv2d, cpu_speedups=True)  # the NHWC/HWIO gradient rules
  got, want = jax.grad(loss(custom), (0, 1))(x, w), jax.grad(loss(reference), (0, 1))(x, w)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _conv_dimension_numbers(jaxpr):
  """The dimension numbers of every convolution in a jaxpr, its loop bodies and sub-jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      found.append(eqn.params['dimension_numbers'])
    for param in eqn.params.values():
      for sub in param if isinstance(param, tuple | list) else [param]:
        inner = getattr(sub, 'jaxpr', sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(inner, 'eqns'):
          found += _conv_dimension_numbers(inner)
  return found


def test_conv_gradients_inside_scan_are_nhwc_hwio_convolutions():
  """XLA:CPU canonicalises convolutions only outside loops; ops.conv2d's backward pass is already NHWC/HWIO, so
  a scanned gradient (train.py's micro-batches) holds NHWC/HWIO convolutions only. Checked on the jaxpr, which
  does not change with jaxlib's compiled-text format; JAX's own transpose rules fail it."""
  def grads(w, xs):  # the kernel gradient summed over xs, and each input gradient
    def loss(w, x):
      return jnp.sum(ops.conv2d(x, w, stride=2, padding='SAME', cpu_speedups=True) ** 2)

    def body(g, x):
      dw, dx = jax.grad(loss, (0, 1))(w, x)
      return g + dw, dx
    return jax.lax.scan(body, jnp.zeros_like(w), xs)

  jaxpr = jax.make_jaxpr(grads)(jnp.ones((3, 3, 2, 4)), jnp.ones((3, 5, 8, 8, 2)))
  assert [e.primitive.name for e in jaxpr.jaxpr.eqns] == ['broadcast_in_dim', 'scan']  # the convs are in the loop
  nhwc = jax.lax.conv_dimension_numbers((1, 8, 8, 2), (3, 3, 2, 4), ('NHWC', 'HWIO', 'NHWC'))
  found = _conv_dimension_numbers(jaxpr.jaxpr)
  assert len(found) == 3 and all(d == nhwc for d in found), found  # forward, input and kernel gradients


@pytest.mark.parametrize('stride,padding,dilation', [(1, 'SAME', 1), (2, 'SAME', 1), (3, 'VALID', 1), (1, 2, 2),
                                                     (2, 'SAME', 2)])
def test_im2col_conv_matches_xla_values_and_gradients(stride, padding, dilation):
  rng = np.random.default_rng(stride)
  x = jnp.asarray(rng.normal(size=(2, 11, 9, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, stride=stride, padding=padding, dilation=dilation)))

  np.testing.assert_allclose(ops.conv2d_im2col(x, w, stride, padding, dilation),
                             ops.conv2d(x, w, stride, padding, dilation), rtol=1e-4, atol=1e-4)
  got, want = jax.grad(loss(ops.conv2d_im2col), (0, 1))(x, w), jax.grad(loss(ops.conv2d), (0, 1))(x, w)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_cross_correlation_equals_scipy_correlate2d_and_differs_from_convolution():
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=(9, 9)), rng.normal(size=(3, 3))
  got = ops.conv2d(_single(x), _single(w).reshape(3, 3, 1, 1))[0, :, :, 0]
  np.testing.assert_allclose(got, scipy.signal.correlate2d(x, w, mode='valid'), rtol=1e-4, atol=1e-4)
  assert not np.allclose(got, scipy.signal.convolve2d(x, w, mode='valid'), atol=1e-2)


def test_multichannel_conv_sums_per_channel_correlations():
  rng = np.random.default_rng(1)
  x, w = rng.normal(size=(8, 8, 3)), rng.normal(size=(3, 3, 3, 2))
  got = ops.conv2d(jnp.asarray(x, jnp.float32)[None], jnp.asarray(w, jnp.float32))[0]
  want = np.stack([sum(scipy.signal.correlate2d(x[..., c], w[:, :, c, o], mode='valid') for c in range(3))
                   for o in range(2)], axis=-1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stride', [2, 3])
def test_stride_s_skips_s_minus_1_locations(stride):
  rng = np.random.default_rng(stride)
  x, w = rng.normal(size=(11, 11)), rng.normal(size=(3, 3))
  got = ops.conv2d(_single(x), _single(w).reshape(3, 3, 1, 1), stride=stride)[0, :, :, 0]
  np.testing.assert_allclose(got, scipy.signal.correlate2d(x, w, mode='valid')[::stride, ::stride],
                             rtol=1e-4, atol=1e-4)


def test_dilation_equals_a_kernel_with_zeros_between_taps():
  rng = np.random.default_rng(2)
  x, w = rng.normal(size=(12, 12)), rng.normal(size=(3, 3))
  dilated = np.zeros((5, 5))
  dilated[::2, ::2] = w
  got = ops.conv2d(_single(x), _single(w).reshape(3, 3, 1, 1), dilation=2)[0, :, :, 0]
  np.testing.assert_allclose(got, scipy.signal.correlate2d(x, dilated, mode='valid'), rtol=1e-4, atol=1e-4)


# (n, k, s, p, d) -> floor((n + 2p - d(k-1) - 1) / s) + 1, worked by hand.
SIZES = [(28, 3, 1, 0, 1, 26), (28, 3, 1, 1, 1, 28), (28, 5, 2, 2, 1, 14), (32, 3, 3, 0, 1, 10),
         (7, 3, 2, 0, 1, 3), (10, 3, 1, 0, 2, 6), (224, 2, 2, 0, 1, 112), (5, 5, 1, 0, 1, 1), (4, 5, 1, 0, 1, 0)]


@pytest.mark.parametrize('n,k,s,p,d,want', SIZES)
def test_conv_output_size_closed_form(n, k, s, p, d, want):
  assert ops.conv_output_size(n, k, s, p, d) == want
  if want >= 1:  # and the op agrees
    y = ops.conv2d(jnp.zeros((1, n, n, 1)), jnp.zeros((k, k, 1, 1)), stride=s, padding=p, dilation=d)
    assert y.shape == (1, want, want, 1)


@pytest.mark.parametrize('n,s,want', [(28, 1, 28), (28, 2, 14), (7, 2, 4), (32, 3, 11)])
def test_same_padding_gives_ceil_n_over_s(n, s, want):
  assert ops.conv_output_size(n, 3, s, 'SAME') == want
  assert ops.conv2d(jnp.zeros((1, n, n, 1)), jnp.zeros((3, 3, 1, 1)), stride=s, padding='SAME').shape[1] == want


@pytest.mark.parametrize('cpu_speedups', [False, True])
@pytest.mark.parametrize('shape', [(4, 5, 6, 3), (128, 28, 28, 32), (7, 3)])
def test_add_bias_value_and_gradients_against_numpy(shape, cpu_speedups):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  b = np.random.default_rng(1).normal(size=shape[-1:]).astype(np.float32)
  w = np.random.default_rng(2).normal(size=shape).astype(np.float32)  # d/dy of sum(w * y) is w
  np.testing.assert_allclose(ops.add_bias(x, b, cpu_speedups), x + b, rtol=1e-6)
  dx, db = jax.jit(jax.grad(lambda x, b: jnp.sum(w * ops.add_bias(x, b, cpu_speedups)), (0, 1)))(x, b)
  np.testing.assert_allclose(dx, w, rtol=1e-6)
  np.testing.assert_allclose(db, w.astype(np.float64).reshape(-1, shape[-1]).sum(0), rtol=1e-5, atol=1e-3)


def test_pools_against_numpy():
  x = np.random.default_rng(3).normal(size=(2, 9, 7, 3)).astype(np.float32)  # odd sizes: VALID drops the rest
  blocks = x[:, :8, :6].reshape(2, 4, 2, 3, 2, 3)
  np.testing.assert_allclose(ops.max_pool(jnp.asarray(x)), blocks.max(axis=(2, 4)), rtol=1e-6)
  np.testing.assert_allclose(ops.avg_pool(jnp.asarray(x)), blocks.mean(axis=(2, 4)), rtol=1e-5)
  overlapping = ops.max_pool(jnp.asarray(x), window=3, stride=2)  # the reduce_window path
  assert overlapping.shape == (2, 4, 3, 3)  # (9 - 3) // 2 + 1, (7 - 3) // 2 + 1
  np.testing.assert_allclose(overlapping[0, 1, 2, 0], x[0, 2:5, 4:7, 0].max(), rtol=1e-6)
  np.testing.assert_allclose(ops.avg_pool(jnp.asarray(x), window=3, stride=2)[1, 3, 0, 2],
                             x[1, 6:9, 0:3, 2].mean(), rtol=1e-5)


@pytest.mark.parametrize('cpu_speedups', [True, False])
@pytest.mark.parametrize('window', [2, 3])
def test_max_pool_gradient_goes_to_the_first_maximum_of_each_window(window, cpu_speedups):
  """Integer inputs tie often; each window's gradient goes to its first maximum in row-major order (numpy loop
  here), as flax's reduce_window max pool (select_and_scatter) gives it; the cropped rows and columns get 0.
  The CPU form (``_max_pool_tiles``'s custom rule) and the plain rule give the same values."""
  x = np.random.default_rng(4).integers(0, 3, size=(2, 9, 7, 3)).astype(np.float32)
  g = np.random.default_rng(5).normal(size=(2, 9 // window, 7 // window, 3)).astype(np.float32)
  want = np.zeros_like(x)
  for n, i, j, c in np.ndindex(g.shape):
    block = x[n, i * window:(i + 1) * window, j * window:(j + 1) * window, c]
    a, b = np.unravel_index(np.argmax(block), block.shape)  # numpy's argmax: the first maximum
    want[n, i * window + a, j * window + b, c] = g[n, i, j, c]
  vjp = lambda pool: jax.vjp(pool, jnp.asarray(x))[1](jnp.asarray(g))[0]  # noqa: E731
  pool = functools.partial(ops.max_pool, window=window, cpu_speedups=cpu_speedups)
  np.testing.assert_array_equal(vjp(pool), want)
  np.testing.assert_array_equal(vjp(lambda x: nn.max_pool(x, (window,) * 2, (window,) * 2)), want)
  np.testing.assert_array_equal(jax.jit(pool)(x),
                                x[:, :9 // window * window, :7 // window * window].reshape(
                                    2, 9 // window, window, 7 // window, window, 3).max(axis=(2, 4)))


@pytest.mark.parametrize('cpu_speedups', [True, False])
def test_max_pool_propagates_nan_and_takes_windows_past_int8_indices(cpu_speedups):
  x = np.zeros((1, 24, 24, 1), np.float32)
  x[0, 0, 1, 0] = np.nan
  assert np.isnan(ops.max_pool(jnp.asarray(x), cpu_speedups=cpu_speedups)[0, 0, 0, 0])
  x[0, 0, 1, 0], x[0, 11, 10, 0] = 0.0, 1.0  # a 12x12 window has 144 elements: the winner is index 142
  grad = jax.grad(lambda x: ops.max_pool(x, 12, cpu_speedups=cpu_speedups)[0, 0, 0, 0])(jnp.asarray(x))
  assert grad[0, 11, 10, 0] == 1 and grad.sum() == 1


def test_seed_224_map_pools_to_112():
  assert ops.max_pool(jnp.zeros((1, 224, 224, 1)), window=2).shape == (1, 112, 112, 1)


def test_gaussian_kernel():
  g = ops.gaussian_kernel(5, 1.0)
  assert g.shape == (5, 5) and np.isclose(g.sum(), 1.0) and g.argmax() == 12
  np.testing.assert_allclose(g, g.T)
  np.testing.assert_allclose(g[2, 3] / g[2, 2], np.exp(-0.5), rtol=1e-5)  # one sigma from the centre


def test_sobel_responds_to_a_ramp_with_eight_times_its_slope():
  gx, gy = ops.sobel_kernels()
  ramp = np.tile(np.arange(10.0) * 0.5, (10, 1))  # intensity rises 0.5 per column
  out = ops.conv2d(_single(ramp), jnp.stack([gx, gy], -1)[:, :, None, :])[0]
  np.testing.assert_allclose(out[..., 0], 4.0, rtol=1e-5)  # (1 + 2 + 1) * (2 * 0.5)
  np.testing.assert_allclose(out[..., 1], 0.0, atol=1e-5)


def test_fixed_filter_bank_averages_channels():
  bank = ops.fixed_filter_bank('sobel', in_channels=3)
  assert bank.shape == (3, 3, 3, 2)
  np.testing.assert_allclose(bank.sum(axis=2)[..., 0], ops.sobel_kernels()[0], rtol=1e-6)


def test_activations_and_unknown_names():
  np.testing.assert_array_equal(ops.get_activation('relu')(jnp.array([-1.0, 2.0])), [0.0, 2.0])
  for fn, name in ((ops.get_activation, 'swishy'), (ops.get_pool, 'median'), (ops.parse_padding, 'FULL')):
    with pytest.raises(ValueError, match=name):
      fn(name)


@pytest.mark.parametrize('shape', [(16, 3, 5, 4), (6, 2, 3), (7, 4), (1, 2, 2, 3)])
def test_channel_sum_against_numpy(shape):
  """Batch sizes with 8, 2 and 1 parts (ops.CHANNEL_SUM_PARTS) and arrays of 2 to 4 dimensions."""
  x = np.random.default_rng(0).normal(1.0, 2.0, size=shape)
  got = jax.jit(ops.channel_sum)(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, x.reshape(-1, shape[-1]).sum(0), rtol=1e-5, atol=1e-5)


def test_channel_sum_and_the_batch_norm_gradient_against_float64():
  """ops.channel_sum against numpy; ops.batch_norm's output and custom gradient against jax.grad of the
  batch-norm formula written here, in float64 numpy-style jnp (scale and bias not at their initial values)."""
  rng = np.random.default_rng(0)
  x = rng.normal(1.0, 2.0, size=(6, 5, 4, 3))
  scale, bias, g = rng.normal(size=3), rng.normal(size=3), rng.normal(size=x.shape)
  np.testing.assert_allclose(ops.channel_sum(jnp.asarray(x, jnp.float32)), x.sum((0, 1, 2)), rtol=1e-5)

  def plain(x, scale, bias):
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    return jnp.sum(((x - mean) / jnp.sqrt(var + 1e-5) * scale + bias) * g)

  def fast(x, scale, bias):
    return jnp.sum(ops.batch_norm(x, scale, bias, 1e-5, None)[0] * g)

  with jax.enable_x64(True):
    want = jax.grad(plain, (0, 1, 2))(*map(jnp.asarray, (x, scale, bias)))
    want_y = plain(*map(jnp.asarray, (x, scale, bias)))
  f32 = [jnp.asarray(a, jnp.float32) for a in (x, scale, bias)]
  np.testing.assert_allclose(fast(*f32), want_y, rtol=1e-4)
  for got, w in zip(jax.grad(fast, (0, 1, 2))(*f32), want, strict=True):
    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)


def test_shift_reflect_moves_the_image_and_reflects_the_border():
  """By hand: reflecting [[1,2,3],[4,5,6],[7,8,9]] one pixel outwards gives rows 5 4 5 6 5 / 2 1 2 3 2 / ...;
  the down-right shift is that padded image's top-left 3x3, the up-left its bottom-right."""
  x = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
  np.testing.assert_array_equal(ops.shift_reflect(x, 1)[0, ..., 0], [[5, 4, 5], [2, 1, 2], [5, 4, 5]])
  np.testing.assert_array_equal(ops.shift_reflect(x, -1)[0, ..., 0], [[5, 6, 5], [8, 9, 8], [5, 6, 5]])
