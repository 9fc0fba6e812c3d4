"""files: atomic JSON, damaged JSON and JSON lines, manifests, locks, unique names, storage errors in one line."""

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from cnnjax import files
from cnnjax.errors import DamagedFile, StorageError


def test_write_json_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / 'r.json')
  files.write_json(path, {'a': 1})
  files.write_json(path, {'b': [1, 2]})
  assert json.loads(open(path).read()) == {'b': [1, 2]} and os.listdir(tmp_path) == ['r.json']


@pytest.mark.parametrize('text', ['', '{"a": 1', 'not json', '\x00\x00'])
def test_read_json_names_the_file_and_the_fix(tmp_path, text):
  (tmp_path / 'result.json').write_text(text)
  with pytest.raises(DamagedFile, match=rf'^{tmp_path / "result.json"} is unreadable \(JSONDecodeError: .*\); '
                                        r'move it away$') as err:
    files.read_json(str(tmp_path / 'result.json'), 'move it away')
  assert '\n' not in str(err.value)


def test_read_jsonl_keeps_good_rows_and_returns_damaged_lines(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1}\n\n{"step": 2, "lo\n[1, 2]\n{"step": 3}\n{"step": 4')  # blank, cut, a list, unended
  rows, damaged = files.read_jsonl(str(path))
  assert rows == [{'step': 1}, {'step': 3}]
  assert damaged == ['\n', '{"step": 2, "lo\n', '[1, 2]\n', '{"step": 4']


def _flip_byte(path, offset=None):
  data = bytearray(open(path, 'rb').read())
  offset = len(data) // 2 if offset is None else offset
  data[offset] ^= 0x01
  open(path, 'wb').write(data)


def test_a_sealed_directory_reports_a_flipped_byte_a_missing_file_and_a_resize(tmp_path):
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'a.bin').write_bytes(bytes(range(256)) * 10)
  (tmp_path / 'sub' / 'b.bin').write_bytes(b'hello')
  files.seal(str(tmp_path))
  assert files.is_sealed(str(tmp_path)) and files.damage(str(tmp_path)) is None
  manifest = json.loads((tmp_path / files.MANIFEST).read_text())
  assert manifest['sub/b.bin'] == [5, '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824']  # sha256
  _flip_byte(tmp_path / 'a.bin')
  assert files.damage(str(tmp_path)) == 'a.bin changed since it was written (checksum mismatch)'
  _flip_byte(tmp_path / 'a.bin')  # flipped back: intact again
  assert files.damage(str(tmp_path)) is None
  (tmp_path / 'sub' / 'b.bin').write_bytes(b'hello!')
  assert files.damage(str(tmp_path)) == 'sub/b.bin changed since it was written (checksum mismatch)'
  os.remove(tmp_path / 'sub' / 'b.bin')
  assert files.damage(str(tmp_path)) == 'sub/b.bin is missing'
  (tmp_path / files.MANIFEST).write_text('{')
  assert files.damage(str(tmp_path)).startswith(f'its manifest {files.MANIFEST} is unreadable')


def test_locked_makes_a_second_process_wait_for_the_first(tmp_path):
  lock, log = str(tmp_path / 'prepare.lock'), tmp_path / 'log'
  script = ('import sys, time; from cnnjax import files\n'
            f'with files.locked({lock!r}, on_wait=lambda: open({str(log)!r}, "a").write("waited\\n")):\n'
            f'  open({str(log)!r}, "a").write(sys.argv[1] + " in\\n"); time.sleep(1.5)\n'
            f'  open({str(log)!r}, "a").write(sys.argv[1] + " out\\n")\n')
  first = subprocess.Popen([sys.executable, '-c', script, 'first'])
  deadline = time.time() + 60
  while not (log.exists() and 'first in' in log.read_text()) and time.time() < deadline:
    time.sleep(0.05)
  second = subprocess.Popen([sys.executable, '-c', script, 'second'])
  assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0
  assert log.read_text().splitlines() == ['first in', 'waited', 'first out', 'second in', 'second out']


def test_unique_sibling_never_returns_a_taken_name(tmp_path):
  names = [files.unique_sibling(str(tmp_path / 'run'), 'overwritten-x') for _ in range(3)]
  assert names == [str(tmp_path / 'run.overwritten-x'), str(tmp_path / 'run.overwritten-x-2'),
                   str(tmp_path / 'run.overwritten-x-3')]
  assert all(os.path.isdir(n) for n in names)


@pytest.mark.parametrize('error,expected', [
    (OSError(errno.ENOSPC, 'No space left on device', '/w/metrics.jsonl'),
     'saving x failed: No space left on device (/w/metrics.jsonl). Checkpoint 10 is intact. Free space there, then '
     'run the same command again.'),
    (PermissionError(errno.EACCES, 'Permission denied', '/w'),
     'saving x failed: Permission denied (/w). Checkpoint 10 is intact. Give this user write permission there, or '
     'use another --workdir.'),
    (OSError(errno.EROFS, 'Read-only file system', '/w/lock'),
     'saving x failed: Read-only file system (/w/lock). Checkpoint 10 is intact. The filesystem is read-only: '
     'remount it writable or use another --workdir.'),
    (NotADirectoryError(errno.ENOTDIR, 'Not a directory', '/w/f/x'),
     'saving x failed: Not a directory (/w/f/x). Checkpoint 10 is intact. A file stands where a directory should '
     'be: move it away or use another --workdir.'),
    # orbax's writes fail as tensorstore's ValueError; tensorflow's as an OpError naming the OS's words.
    (ValueError('RESOURCE_EXHAUSTED: Error writing "p/0" in OCDBT database at local file "/w/c/": Failed writing: '
                '"/w/c/d/ec5a": Failed to write 966148 bytes to file 17: No space left on device '
                "[os_error_code='28']"),
     'saving x failed: No space left on device (/w/c/d/ec5a). Checkpoint 10 is intact. Free space there, then run '
     'the same command again.'),
    (RuntimeError('RESOURCE_EXHAUSTED: /w/events.out.tfevents.1; No space left on device\n\tFailed to flush'),
     'saving x failed: No space left on device (/w/events.out.tfevents.1). Checkpoint 10 is intact. Free space '
     'there, then run the same command again.'),
])
def test_storage_errors_become_one_line_with_what_is_intact_and_the_fix(error, expected):
  assert str(files.storage_error(error, 'saving x', 'checkpoint 10 is intact')) == expected


def test_a_storage_error_is_found_along_the_causes_and_other_errors_are_not_storage_errors():
  try:
    try:
      raise OSError(errno.EDQUOT, 'Disk quota exceeded', '/w/x')
    except OSError as inner:
      raise RuntimeError('save failed') from inner
  except RuntimeError as outer:
    assert files.os_errno(outer) == (errno.EDQUOT, '/w/x')
  assert files.storage_error(ValueError('shapes do not match'), 'x', 'y') is None
  assert files.storage_error(FileNotFoundError(errno.ENOENT, 'No such file', '/w'), 'x', 'y') is None


def test_storage_errors_asks_what_is_intact_only_when_a_write_fails_and_passes_other_errors():
  asked = []
  with pytest.raises(StorageError, match=r'^writing x failed: No space left on device \(/d\)\. Step 3 is intact\.'):
    with files.storage_errors('writing x', lambda: asked.append(1) or 'step 3 is intact'):
      raise OSError(errno.ENOSPC, 'No space left on device', '/d')
  with files.storage_errors('writing x', lambda: asked.append(2) or ''):
    pass
  with pytest.raises(KeyError), files.storage_errors('writing x', 'nothing'):
    raise KeyError('not a storage error')
  assert asked == [1]
