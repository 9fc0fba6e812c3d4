"""Files that must survive faults: JSON written atomically and read back with one-line errors, manifests of
checksums that seal a directory, advisory locks, unique names beside a path, and the OS's storage errors
(full disk, read-only filesystem, no permission, a file in the way) turned into one line; ``closing`` closes what a
block opened however it ends."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging

from cnnjax.errors import CnnjaxError, DamagedFile, StorageError

MANIFEST = 'cnnjax_manifest.json'  # {relative path: [size, sha256]} of every other file of a sealed directory
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------------------
# JSON.

def write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (a temporary file beside it, then a rename): a reader sees the old
  file or the whole new one, never a part, and a write that fails (full disk) leaves the old file as it was."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'w', newline='') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def read_text(path: str) -> str:
  """The text of a small file cnnjax wrote, stripped."""
  with open(path) as f:
    return f.read().strip()


def write_json(path: str, obj: Any, sort_keys: bool = True) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically (``write_text``)."""
  write_text(path, json.dumps(obj, indent=1, sort_keys=sort_keys))


def read_json(path: str, fix: str) -> Any:
  """The JSON value in ``path``.

  Raises:
    DamagedFile naming the file, what is wrong and ``fix``, for a file that is empty, cut or not JSON.
  """
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DamagedFile(f'{path} is unreadable ({type(e).__name__}: {e}); {fix}') from None


def read_jsonl(path: str) -> tuple[list[dict[str, Any]], list[str]]:
  """The JSON objects of a JSON-lines file, and its damaged lines (blank, cut by a kill, or not an object)."""
  rows, damaged = [], []
  with open(path, errors='replace') as f:
    for line in f:
      try:
        row = json.loads(line) if line.endswith('\n') else None
      except json.JSONDecodeError:
        row = None
      (rows.append(row) if isinstance(row, dict) else damaged.append(line))
  return rows, damaged


# ---------------------------------------------------------------------------------------------------------
# Manifests: a directory sealed by the sizes and sha256 of its files.

def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _files(directory: str) -> list[str]:
  paths = []
  for root, _, names in os.walk(directory):
    paths += [os.path.relpath(os.path.join(root, n), directory) for n in names]
  return sorted(p for p in paths if p != MANIFEST)


def seal(directory: str) -> None:
  """Writes ``directory``'s manifest: the size and sha256 of every file below it."""
  full = {rel: os.path.join(directory, rel) for rel in _files(directory)}
  write_json(os.path.join(directory, MANIFEST), {rel: [os.path.getsize(p), _sha256(p)] for rel, p in full.items()})


def is_sealed(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, MANIFEST))


def damage(directory: str) -> str | None:
  """What differs between a sealed ``directory`` and its manifest ('X changed', 'X is missing', ...), or None when
  every file it lists is there with its size and checksum. Files added since are not checked."""
  try:
    manifest = read_json(os.path.join(directory, MANIFEST), '')
  except (DamagedFile, OSError) as e:
    return f'its manifest {MANIFEST} is unreadable ({type(e).__name__})'
  if not isinstance(manifest, dict):
    return f'its manifest {MANIFEST} is not a manifest'
  for rel, (size, sha) in manifest.items():
    path = os.path.join(directory, rel)
    if not os.path.isfile(path):
      return f'{rel} is missing'
    if os.path.getsize(path) != size or _sha256(path) != sha:
      return f'{rel} changed since it was written (checksum mismatch)'
  return None


# ---------------------------------------------------------------------------------------------------------
# Locks and names.

@contextlib.contextmanager
def locked(path: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
  """Holds an exclusive ``flock`` on ``path`` (created if need be), waiting for another holder to let go;
  ``on_wait`` is called once if it has to wait. The kernel releases the lock when the process ends, however."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      if on_wait:
        on_wait()
      fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the lock


def unique_sibling(path: str, suffix: str) -> str:
  """Creates and returns a new empty directory ``PATH.SUFFIX`` (``PATH.SUFFIX-2``, ... when taken): mkdir is
  atomic, so two processes never get the same name."""
  base = f'{path.rstrip("/")}.{suffix}'
  for i in range(1, 10_000):
    candidate = base if i == 1 else f'{base}-{i}'
    try:
      os.mkdir(candidate)
      return candidate
    except FileExistsError:
      continue
  raise FileExistsError(errno.EEXIST, 'no free name', base)


# ---------------------------------------------------------------------------------------------------------
# Storage errors.

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                            errno.EISDIR, errno.EEXIST})
_FIXES = {
    errno.ENOSPC: 'free space there, then run the same command again',
    errno.EROFS: 'the filesystem is read-only: remount it writable or use another {flag}',
    errno.EACCES: 'give this user write permission there, or use another {flag}',
    errno.ENOTDIR: 'a file stands where a directory should be: move it away or use another {flag}',
}
_FIXES.update({errno.EDQUOT: _FIXES[errno.ENOSPC], errno.EPERM: _FIXES[errno.EACCES],
               errno.EISDIR: _FIXES[errno.ENOTDIR], errno.EEXIST: _FIXES[errno.ENOTDIR]})
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)")  # orbax's writes fail as tensorstore's ValueError
_SAID_IN_WORDS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_TENSORSTORE_PATH = re.compile(r'Failed (?:writing|to open|to create)[^"]*"([^"]+)"')


def os_errno(e: BaseException) -> tuple[int, str | None] | None:
  """(errno, path) of a storage error: an OSError, or a library's error (tensorstore's, under orbax) that carries
  one, looked for along its causes; None for any other exception."""
  while e is not None:
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
      return e.errno, e.filename
    match = _TENSORSTORE_ERRNO.search(str(e))
    if match and int(match.group(1)) in STORAGE_ERRNOS:
      path = _TENSORSTORE_PATH.search(str(e))
      return int(match.group(1)), path.group(1) if path else None
    for code in _SAID_IN_WORDS:  # tensorflow's errors carry the OS's words only: '/path; No space left ...'
      if os.strerror(code) in str(e):
        path = re.search(r'(/[^\s;:"]+)[;:]? ' + re.escape(os.strerror(code)), str(e))
        return code, path.group(1) if path else None
    e = e.__cause__ or e.__context__
  return None


def storage_error(e: BaseException, what: str, intact: str, flag: str = '--workdir') -> StorageError | None:
  """The one-line StorageError for ``e`` if it is a storage error (see ``os_errno``), else None.

  Args:
    e: the exception.
    what: what was being written, e.g. 'saving checkpoint 20'.
    intact: what is still whole, e.g. 'checkpoint 10 is intact'.
    flag: the flag that chose the place, for the fix.
  """
  found = os_errno(e)
  if found is None:
    return None
  code, path = found
  where = f' ({path})' if path else ''
  fix = _FIXES[code].format(flag=flag)
  return StorageError(f'{what} failed: {os.strerror(code)}{where}. {intact[:1].upper()}{intact[1:]}. '
                      f'{fix[:1].upper()}{fix[1:]}.')


@contextlib.contextmanager
def storage_errors(what: str, intact: str | Callable[[], str], flag: str = '--workdir') -> Iterator[None]:
  """Turns a failed write inside the block (see ``os_errno``) into the one-line StorageError of ``storage_error``;
  ``intact`` may be a function, asked only when a write fails (what is intact may change while the block runs).
  cnnjax's own errors and any other error pass as they are."""
  try:
    yield
  except CnnjaxError:
    raise
  except Exception as e:  # noqa: BLE001 - storage errors become one line; any other is re-raised as it is
    error = storage_error(e, what, intact() if callable(intact) else intact, flag)
    if error is None:
      raise
    raise error from None


def warn_damaged_lines(path: str, damaged: list[str]) -> None:
  """One warning for a JSON-lines file's damaged lines."""
  if damaged:
    logging.warning('%s: skipped %d damaged line%s (blank, cut or not JSON); the other rows are kept.', path,
                    len(damaged), 's' * (len(damaged) > 1))


@contextlib.contextmanager
def closing(*closers: Callable[[], None]) -> Iterator[None]:
  """Calls every closer however the block ends; after a failure, a failing close is not news."""
  failing = False
  try:
    yield
  except BaseException:
    failing = True
    raise
  finally:
    for close in closers:
      try:
        close()
      except Exception:  # noqa: BLE001
        if not failing:
          raise
