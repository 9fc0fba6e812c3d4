"""Meshes, placement and the back-ends' names, on the 8 fake CPU devices of conftest.py."""

import jax
import numpy as np
import pytest

from cnnjax import parallel
from cnnjax.config import ConfigError


def test_replicate_puts_one_copy_on_every_device_and_shard_one_slice_each():
  mesh = parallel.local_mesh()
  assert mesh.size == jax.local_device_count() == 8
  tree = parallel.replicate({'w': np.arange(3.0)}, mesh)
  assert tree['w'].shape == (8, 3) and all(np.array_equal(s.data[0], np.arange(3.0))
                                            for s in tree['w'].addressable_shards)
  batch = parallel.shard(np.arange(16.0).reshape(8, 2), mesh)
  assert [s.data.reshape(-1).tolist() for s in batch.addressable_shards][3] == [6.0, 7.0]
  assert parallel.local_value(batch).tolist() == [[0.0, 1.0]] and parallel.first(tree['w']) == 0.0


def test_backends_by_name():
  assert isinstance(parallel.get_backend('pmap'), parallel.PmapBackend)
  assert isinstance(parallel.get_backend('shard_map'), parallel.ShardMapBackend)
  with pytest.raises(ConfigError, match="--config.parallel='xmap' is unknown"):
    parallel.get_backend('xmap')
