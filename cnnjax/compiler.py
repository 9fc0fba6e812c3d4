"""Compiler settings that entry points (launch.py, benchmarks, tests/conftest.py) apply before the first
computation: cnnjax's default XLA flags and JAX's persistent compilation cache.
"""

import importlib.metadata
import os

# XLA:CPU runs dots, and the convolutions it lowers to dots, through YNNPACK: 2-3x faster training of the
# benchmark CNN on 2 cores (docs/performance.md). jaxlib 0.9 added the flag; XLA aborts on flags it does not know.
DEFAULT_XLA_FLAGS = {'xla_cpu_experimental_ynn_fusion_type': 'dot,individual_dot'}
MIN_JAXLIB = (0, 9)
DEFAULT_CACHE_DIR = '~/.cache/cnnjax/jax_compilation_cache'


def _jaxlib_version() -> tuple[int, ...]:
  return tuple(int(p) for p in importlib.metadata.version('jaxlib').split('.')[:2])


def set_default_xla_flags(enabled: bool = True) -> str:
  """Adds ``DEFAULT_XLA_FLAGS`` to $XLA_FLAGS, except flags the user already set there.

  XLA reads $XLA_FLAGS once, when JAX starts its first backend, so this must run before that.

  Args:
    enabled: False leaves $XLA_FLAGS alone (XLA's own CPU kernels).

  Returns:
    The resulting $XLA_FLAGS.
  """
  current = os.environ.get('XLA_FLAGS', '')
  if enabled and _jaxlib_version() >= MIN_JAXLIB:
    added = [f'--{k}={v}' for k, v in DEFAULT_XLA_FLAGS.items() if f'--{k}=' not in current]
    os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  return os.environ.get('XLA_FLAGS', '')


def set_compilation_cache(path: str | None) -> str:
  """Keeps every compiled program in ``path``, so that re-runs, resumed runs and sweep points that repeat a
  program (seeds, shared models) load it instead of compiling again.

  Args:
    path: the cache directory (created on first write); None: $JAX_COMPILATION_CACHE_DIR or
      ``DEFAULT_CACHE_DIR``; '': no persistent cache.

  Returns:
    The directory used, or '' when disabled.
  """
  import jax
  if path is None:
    path = os.environ.get('JAX_COMPILATION_CACHE_DIR') or DEFAULT_CACHE_DIR
  path = os.path.abspath(os.path.expanduser(path)) if path else ''
  jax.config.update('jax_compilation_cache_dir', path or None)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)  # ours take ~1-2 s: keep them all
  return path
