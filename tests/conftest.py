"""Eight fake CPU devices and cnnjax's default XLA flags for every test (set before any JAX backend starts),
and shared fixtures."""

import contextlib
import os
import subprocess

from cnnjax import compiler

compiler.set_default_xla_flags()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ notices (TFDS), quieted as launch.py quiets them
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)

import pytest  # noqa: E402

from cnnjax.cli import load_experiment  # noqa: E402


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent compilation cache for the test session, in this process and its launcher subprocesses
  (instead of ~/.cache): the many runs of the same tiny programs compile once."""
  path = str(tmp_path_factory.mktemp('jax_compilation_cache'))
  os.environ['JAX_COMPILATION_CACHE_DIR'] = path
  compiler.set_compilation_cache(path)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data dir per test session; the offline datasets are generated into it on first use (skips where
  TensorFlow Datasets is not installed, as on an accelerator image: benchmarks/accelerator_check.py)."""
  pytest.importorskip('tensorflow_datasets', reason='preparing a dataset needs tensorflow-datasets')
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))


@pytest.fixture
def config():
  """The baseline config with the tiny test model and a short, fast schedule, on the host pipeline (the arrays
  read on the host), which the unit tests exercise; the default (auto: the device pipeline here) is tested by
  test_device_pipeline and the launcher's end-to-end tests."""
  config = load_experiment('shapes').get_config()
  config.data.pipeline = 'host'
  config.model.variant = 'tiny'
  config.batch_size = 64
  config.eval_batch_size = 512
  config.num_train_steps = 20
  config.log_every_steps = 10
  config.eval_every_steps = 20
  config.checkpoint_every_steps = 10
  return config


@pytest.fixture
def mock_dataset(tmp_path):
  """``mock_dataset(name, num_examples, splits=('train', 'test'))``: a context in which TFDS's ``name`` is random
  data (``tfds.testing.mock_data``) whose metadata gives each of ``splits`` ``num_examples`` examples, as cnnjax's
  validation split is carved by size. Its records are read through TFDS's random-access data source (array_record):
  the mock's tf.data reads ignore a split's slice."""
  tfds = pytest.importorskip('tensorflow_datasets', reason='mock data needs tensorflow-datasets')

  @contextlib.contextmanager
  def mock(name, num_examples, splits=('train', 'test')):
    metadata = str(tmp_path / 'mock_metadata')
    builder = tfds.builder(name, data_dir=metadata)
    builder.info.set_splits(tfds.core.SplitDict(
        [tfds.core.SplitInfo(name=n, shard_lengths=[num_examples], num_bytes=0) for n in splits]))
    builder.info.set_file_format('array_record', override=True)
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=num_examples, data_dir=metadata):
      yield

  return mock


@pytest.fixture
def mount_point(tmp_path):
  """``mount_point(options)``: a filesystem mounted on a new directory (tmpfs of a size, or a read-only bind),
  unmounted afterwards; skips where this process may not mount (not root, or no mount namespace)."""
  mounted = []

  def mount(*args):
    target = tmp_path / f'mnt{len(mounted)}'
    target.mkdir()
    for i, step in enumerate(args):  # a mount, then changes to it (remount read-only)
      proc = subprocess.run(['mount', *step, str(target)], capture_output=True, text=True)
      if proc.returncode:
        pytest.skip(f'cannot mount here ({proc.stderr.strip() or proc.returncode}); the injected-error tests cover it')
      if i == 0:
        mounted.append(target)
    return target

  yield mount
  for target in reversed(mounted):
    subprocess.run(['umount', str(target)], capture_output=True)
