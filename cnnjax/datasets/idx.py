"""Preparing TFDS's MNIST-family datasets (mnist, fashion_mnist) from a local directory of their IDX files.

The original distribution of these datasets is four IDX files (``train-images-idx3-ubyte.gz``, ...), as
Debian's ``dataset-fashion-mnist`` package installs them and as air-gapped clusters keep them. TFDS's own
builder downloads exactly these files and generates its examples from them; here the same builder class
(same name, version, features, label names and splits, same example generation) is handed the local files
instead of a download, so the prepared dataset is the one ``tfds.load`` would have made.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import urllib.parse

import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered

from cnnjax.datasets import png

FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def find(source_dir: str) -> dict[str, str] | None:
  """{file name: path} of the four IDX files in ``source_dir`` (gzipped or not), or None if any is missing."""
  found = {}
  for name in FILES:
    paths = [os.path.join(source_dir, name + ext) for ext in ('.gz', '')]
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
      return None
    found[name] = path
  return found


class _LocalFiles:
  """Stands in for tfds's DownloadManager: ``download_and_extract`` of the IDX URLs gives the local files,
  decompressed into ``extract_dir`` (TFDS's example generation reads them uncompressed)."""

  def __init__(self, files: dict[str, str], extract_dir: str):
    self._files, self._extract_dir = files, extract_dir

  def download_and_extract(self, urls: dict[str, str]) -> dict[str, str]:
    result = {}
    for key, url in urls.items():
      name = os.path.basename(urllib.parse.urlparse(url).path).removesuffix('.gz')
      source, target = self._files[name], os.path.join(self._extract_dir, name)
      with (gzip.open if source.endswith('.gz') else open)(source, 'rb') as src, open(target, 'wb') as dst:
        shutil.copyfileobj(src, dst)
      result[key] = target
    return result


def prepare(name: str, source_dir: str, data_dir: str | None, file_format: str = 'tfrecord'
            ) -> tfds.core.DatasetBuilder:
  """Prepares TFDS's dataset ``name`` in ``data_dir`` from the IDX files in ``source_dir``, as ``file_format``
  files.

  Raises:
    FileNotFoundError if a file is missing.
  """
  files = find(source_dir)
  if files is None:
    raise FileNotFoundError(f'{source_dir} lacks some of {FILES} (.gz or not)')
  base = tfds.builder_cls(name)
  with tempfile.TemporaryDirectory(prefix='cnnjax-idx-') as extract_dir:
    with registered.skip_registration():  # the same builder under the same name, not a new dataset
      class FromLocalFiles(base):
        name = base.name

        def _split_generators(self, dl_manager):
          del dl_manager  # nothing is downloaded
          return super()._split_generators(_LocalFiles(files, extract_dir))

        def _generate_examples(self, **kwargs):
          for key, example in super()._generate_examples(**kwargs):  # PNG by pillow: no TensorFlow needed
            yield key, {**example, 'image': png.encode(example['image'])}

    builder = FromLocalFiles(data_dir=data_dir)
    builder.download_and_prepare(file_format=file_format)
  return tfds.builder(name, data_dir=data_dir)
