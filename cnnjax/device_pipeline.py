"""The device pipeline: a dataset's arrays kept on every device, each batch chosen and augmented inside the
jitted step (no host work per step, no TensorFlow).

Training order: the example at global position p = step * batch_size + k is ``permute(p % N)`` of epoch
p // N, a Feistel network over the next even power of two above N with cycle-walking: a bijection of [0, N)
per (seed, epoch), element by element, with no sort. Each example's augmentation draws from a key of
(seed, p). A step's batch is therefore a pure function of (seed, step), whatever the number of devices or
processes (device d of D takes positions d * B/D ... (d + 1) * B/D - 1 of the step), and a resumed run sees
exactly the batches an uninterrupted one would. Positions are uint32: a run sees fewer than 2**32 examples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.augment import Preprocess, augment_batch

FEISTEL_ROUNDS = 4
MAX_POSITIONS = 2**32


def _mix(x: jax.Array) -> jax.Array:
  """murmur3's 32-bit finaliser: a bijective mixing of uint32 values."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def permute(i: jax.Array, n: int, seed: int, epoch: jax.Array) -> jax.Array:
  """Element ``i`` (uint32, < n) of the permutation of [0, n) of (seed, epoch); elementwise over ``i`` and
  ``epoch``."""
  half = max(1, ((n - 1).bit_length() + 1) // 2)  # the network permutes [0, 4**half) >= n
  mask = jnp.uint32((1 << half) - 1)
  base = _mix(jnp.uint32(seed) ^ jnp.uint32(0x9E3779B9)) ^ _mix(epoch.astype(jnp.uint32) + jnp.uint32(0x7F4A7C15))
  keys = [_mix(base + jnp.uint32(r + 1)) for r in range(FEISTEL_ROUNDS)]

  def feistel(x):
    hi, lo = x >> half, x & mask
    for key in keys:
      hi, lo = lo, hi ^ (_mix(lo ^ key) & mask)
    return (hi << half) | lo

  # Cycle-walking: values that land at or above n go round again; each ends inside, and the map stays a bijection.
  y = feistel(i.astype(jnp.uint32))
  return jax.lax.while_loop(lambda y: jnp.any(y >= n), lambda y: jnp.where(y >= n, feistel(y), y), y)


def positions(step: jax.Array, batch_size: int, per_device: int, device: jax.Array) -> jax.Array:
  """The global positions (uint32) of device ``device``'s share of step ``step``'s batch."""
  start = step.astype(jnp.uint32) * jnp.uint32(batch_size) + device.astype(jnp.uint32) * jnp.uint32(per_device)
  return start + jnp.arange(per_device, dtype=jnp.uint32)


def train_batch(data: dict[str, jax.Array], step: jax.Array, device: jax.Array, *, num_train: int, batch_size: int,
                per_device: int, seed: int, key: jax.Array, preprocess: Preprocess) -> dict[str, jax.Array]:
  """This device's share of step ``step``'s training batch: {'image': float32 [b, H, W, C], 'target': [b, ...]},
  gathered from ``data`` ({'image': uint8 [N, ...], 'target': [N, ...]}, whose first ``num_train`` examples are
  the training split) and augmented with keys of (``key``, position)."""
  p = positions(step, batch_size, per_device, device)
  index = permute(p % jnp.uint32(num_train), num_train, seed, p // jnp.uint32(num_train))
  return {'image': augment_batch(data['image'][index], p, key, preprocess), 'target': data['target'][index]}


def eval_batch(data: dict[str, jax.Array], batch: dict[str, jax.Array], preprocess: Preprocess) -> dict[str, jax.Array]:
  """The examples ``batch['index']`` of ``data``, normalised, with ``batch['mask']`` (False for padding)."""
  return {'image': preprocess.normalize(data['image'][batch['index']]), 'target': data['target'][batch['index']],
          'mask': batch['mask']}


def eval_indices(start: int, count: int, batch_size: int, num_devices: int, first_device: int, local_devices: int
                 ) -> list[dict[str, np.ndarray]]:
  """Examples [start, start + count) in global batches of ``batch_size``, padded with masked copies of example
  ``start``: for each batch this process's rows {'index': int32 [local_devices, b], 'mask': bool [...]}, those
  of global devices first_device ... first_device + local_devices - 1."""
  per_device = batch_size // num_devices
  batches = []
  for offset in range(0, count, batch_size):
    index = np.arange(offset, offset + batch_size)
    mask = index < count
    index = np.where(mask, start + index, start).astype(np.int32)
    rows = slice(first_device * per_device, (first_device + local_devices) * per_device)
    batches.append({'index': index[rows].reshape(local_devices, per_device),
                    'mask': mask[rows].reshape(local_devices, per_device)})
  return batches
