"""Meshes, placement and the back-ends' names, on the 8 fake CPU devices of conftest.py."""

import jax
import jax.numpy as jnp
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


@pytest.mark.parametrize('members,groups,shard', [(15, 1, True), (2, 2, True), (12, 4, True), (16, 8, True),
                                                  (16, 1, False)])
def test_a_population_is_sharded_over_the_most_device_groups_that_divide_its_members(members, groups, shard):
  """A vmapped population over gcd(members, devices) rows; a loop's (shard_members=False) over one row, every
  member's batch split over all 8 devices as in its solo run."""
  backend = parallel.PopulationBackend(members, shard_members=shard)
  assert dict(backend.mesh.shape) == {parallel.MEMBER_AXIS: groups, parallel.AXIS: 8 // groups}
  state = backend.from_checkpoint(backend.replicated(np.arange(members * 3.0).reshape(members, 3)))
  assert {s.data.shape for s in state.addressable_shards} == {(members // groups, 3)}
  np.testing.assert_array_equal(parallel.gathered(backend.to_checkpoint(state)), np.arange(members * 3.0)
                                .reshape(members, 3))


def test_a_population_step_averages_over_the_devices_of_its_members_only():
  """Four members on a 4 x 2 mesh: each device adds its share's index (0 or 1) to its member's value; the mean
  over AXIS gives value + 0.5 per member, not a mix of members; the step's metrics, members first, come back
  so."""
  backend = parallel.PopulationBackend(4)
  def step(state, data, keys):
    mean = jax.lax.pmean(state + jax.lax.axis_index(parallel.AXIS), parallel.AXIS)
    return state + keys, {'value': jnp.stack([mean, mean + data], -1)[:, 0, :]}  # [members here, 2 steps]
  state = backend.from_checkpoint(backend.replicated(np.array([[0.0], [10.0], [20.0], [30.0]])))
  keys = jax.device_put(np.ones((4, 1)), backend.member_sharding)
  state, metrics = backend.map_train_step(step)(state, backend.put_replicated(np.float32(100.0)), keys)
  np.testing.assert_array_equal(parallel.gathered(state).ravel(), [1, 11, 21, 31])
  np.testing.assert_array_equal(parallel.gathered(metrics['value']), [[0.5, 100.5], [10.5, 110.5], [20.5, 120.5],
                                                                       [30.5, 130.5]])
  assert parallel.per_member(metrics['value'][:, 0], 4).tolist() == [0.5, 10.5, 20.5, 30.5]
