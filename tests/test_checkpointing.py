"""checkpointing: sealed saves, restoring the newest intact checkpoint past emptied, truncated or flipped ones,
and a save the disk has no room for refused before anything is written."""

import collections
import os
import shutil

import jax
import numpy as np
import pytest

from cnnjax import checkpointing, files
from cnnjax.errors import StorageError


def _state(value):
  return {'params': {'w': np.full((64, 8), value, np.float32)}, 'step': np.array(value, np.int32)}


def _saved(tmp_path, steps=(10, 20, 30), keep=None):
  checkpoints = checkpointing.Checkpoints(str(tmp_path), keep=keep)
  for step in steps:
    checkpoints.save(step, _state(step))
  return checkpoints


def _data_files(tmp_path, step):
  root = tmp_path / 'checkpoints' / str(step) / 'default'
  return [os.path.join(r, n) for r, _, names in os.walk(root) for n in names if '/d/' in os.path.join(r, n)]


def test_each_save_is_sealed_and_restores_bitwise(tmp_path):
  checkpoints = _saved(tmp_path)
  assert checkpoints.all_steps() == [10, 20, 30]
  for step in (10, 20, 30):
    assert files.is_sealed(str(tmp_path / 'checkpoints' / str(step)))
    jax.tree.map(np.testing.assert_array_equal, checkpoints.restore(step, _state(0)), _state(step))


@pytest.mark.parametrize('damage', ['emptied', 'default_removed', 'flipped_byte', 'truncated'])
def test_a_damaged_newest_checkpoint_is_set_aside_alone_and_the_one_before_restored(tmp_path, damage, caplog):
  _saved(tmp_path).close()
  newest = tmp_path / 'checkpoints' / '30'
  if damage == 'emptied':  # rm -rf checkpoints/30/*
    for name in os.listdir(newest):
      shutil.rmtree(newest / name) if (newest / name).is_dir() else os.remove(newest / name)
  elif damage == 'default_removed':
    shutil.rmtree(newest / 'default')
  else:
    path = max(_data_files(tmp_path, 30), key=os.path.getsize)
    data = bytearray(open(path, 'rb').read())
    if damage == 'flipped_byte':
      data[len(data) // 2] ^= 0x01
    open(path, 'wb').write(data if damage == 'flipped_byte' else data[:len(data) // 2])
  checkpoints = checkpointing.Checkpoints(str(tmp_path))
  with caplog.at_level('WARNING'):
    restored = checkpoints.restore_latest(_state(0))
  jax.tree.map(np.testing.assert_array_equal, restored, _state(20))
  assert checkpoints.all_steps() == [10, 20]
  aside = os.listdir(tmp_path / checkpointing.CORRUPT_DIR)
  assert len(aside) == 1 and aside[0].startswith('30.')
  assert 'Checkpoint 30 is unreadable' in caplog.text and 'Checkpoint 20' not in caplog.text
  if damage == 'flipped_byte':  # orbax would read these bytes without complaint: the checksum catches them
    assert 'checksum mismatch' in caplog.text


def test_with_no_readable_checkpoint_the_run_starts_over_and_says_so(tmp_path, caplog):
  _saved(tmp_path, steps=(10, 20)).close()
  for step in (10, 20):
    shutil.rmtree(tmp_path / 'checkpoints' / str(step) / 'default')
  checkpoints = checkpointing.Checkpoints(str(tmp_path))
  with caplog.at_level('WARNING'):
    template = _state(0)
    assert checkpoints.restore_latest(template) is template
  assert 'No readable checkpoint is left' in caplog.text and 'starting from step 0' in caplog.text
  assert len(os.listdir(tmp_path / checkpointing.CORRUPT_DIR)) == 2


def test_an_unsealed_checkpoint_is_restored_when_orbax_can_read_it(tmp_path):
  _saved(tmp_path, steps=(10,)).close()  # as an older cnnjax, or a kill between orbax's commit and the seal
  os.remove(tmp_path / 'checkpoints' / '10' / files.MANIFEST)
  restored = checkpointing.Checkpoints(str(tmp_path)).restore_latest(_state(0))
  jax.tree.map(np.testing.assert_array_equal, restored, _state(10))


def test_a_save_without_room_is_refused_in_one_line_before_writing(tmp_path, monkeypatch):
  checkpoints = _saved(tmp_path, steps=(10,))
  usage = collections.namedtuple('usage', 'total used free')
  monkeypatch.setattr(shutil, 'disk_usage', lambda path: usage(10**9, 10**9 - 1000, 1000))
  with pytest.raises(StorageError, match=r'^saving checkpoint 20 failed: No space left on device \(.*checkpoints\)\. '
                                         r'Checkpoint 10 in .* is intact \(1,000 bytes free, about [\d,]+ needed\)\. '
                                         r'Free space there, then run the same command again\.$'):
    checkpoints.save(20, _state(20))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10']


def test_the_best_checkpoint_is_kept_by_its_metric(tmp_path):
  best = checkpointing.Checkpoints(str(tmp_path), checkpointing.BEST_CHECKPOINT_DIR, best=('val_accuracy', 1))
  for step, accuracy in ((10, 0.5), (20, 0.7), (30, 0.6)):
    best.save(step, _state(step), metrics={'val_accuracy': accuracy})
  assert best.best_step() == 20 and best.all_steps() == [20]
  jax.tree.map(np.testing.assert_array_equal, best.restore(20, _state(0)), _state(20))


def test_intact_names_the_newest_committed_step(tmp_path):
  assert checkpointing.intact(str(tmp_path / 'none')) == 'no checkpoint was written yet'
  for name in ('5', '40', '120.orbax-checkpoint-tmp', 'x'):
    (tmp_path / name).mkdir()
  assert checkpointing.intact(str(tmp_path)) == f'checkpoint 40 in {tmp_path} is intact'


def test_a_save_that_fails_inside_orbax_on_a_full_disk_is_one_line(mount_point, monkeypatch):
  disk = mount_point(['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs'])
  monkeypatch.setattr(checkpointing, 'ROOM_MARGIN', -10**9)  # past the room check: orbax itself hits the full disk
  checkpoints = checkpointing.Checkpoints(str(disk))
  with pytest.raises(StorageError, match=rf'^saving checkpoint 1 failed: No space left on device \({disk}/checkpoints/'
                                         r'.*\)\. No checkpoint was written yet\. Free space there'):
    checkpoints.save(1, {'w': np.random.default_rng(0).random((1024, 1024), np.float32)})  # 4 MB, incompressible
