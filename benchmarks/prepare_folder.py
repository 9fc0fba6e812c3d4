r"""Preparing an image folder, measured: cnnjax's preparation (pillow on a thread per core, short side scaled and
centre cropped, written chunk by chunk into the arrays) against a PyTorch DataLoader with a worker per
core decoding the same files as torchvision's ImageFolder does (PIL, RGB, Resize(224) then CenterCrop(224)),
rounds alternating; images/s (medians), the prepared size on disk, and the peak resident memory of a preparation
against the decoded images' size.

  python -m cnnjax.datasets.pets_folder --out=/tmp/cnnjax/pets --per_class=500
  python benchmarks/prepare_folder.py --folder=/tmp/cnnjax/pets --out=results/prepare/cpu.json

torchvision itself has no CPU wheel that loads beside torch 2.13's CPU build here, so the PyTorch arm is
ImageFolder's loader and transforms written out (``FolderDataset``) in torch's own DataLoader.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string('folder', '/tmp/cnnjax/pets', 'An image folder (one subfolder per class).')
flags.DEFINE_integer('size', 224, 'The side images are fitted to.')
flags.DEFINE_integer('rounds', 3, 'Rounds per arm, alternating (the median is reported).')
flags.DEFINE_string('out', None, 'Write the results here as JSON.')
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FolderDataset:
  """torchvision.datasets.ImageFolder with transforms Resize(size) (bilinear, antialiased, as torchvision on PIL)
  and CenterCrop(size), then PILToTensor: its samples, loader and transforms, written out."""

  def __init__(self, root: str, size: int):
    from cnnjax import sources
    layout = sources.folder_layout(root)['train']
    self.classes = sorted(layout)
    self.samples = [(path, i) for i, c in enumerate(self.classes) for path in layout[c]]
    self.size = size

  def __len__(self) -> int:
    return len(self.samples)

  def __getitem__(self, i: int):
    import numpy as np
    import torch
    from PIL import Image
    path, label = self.samples[i]
    try:
      with open(path, 'rb') as f:
        image = Image.open(f).convert('RGB')
    except Exception:  # noqa: BLE001 - ImageFolder would raise; a bad file counts as a sample of zeros here
      return torch.zeros(3, self.size, self.size, dtype=torch.uint8), -1
    w, h = image.size
    scale = self.size / min(w, h)
    image = image.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BILINEAR)
    left, top = (image.size[0] - self.size) // 2, (image.size[1] - self.size) // 2
    image = image.crop((left, top, left + self.size, top + self.size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), label


def torch_pass(folder: str, size: int) -> tuple[float, int]:
  """(seconds, images) of one pass of a DataLoader (a worker per core, batches of 64) over the folder."""
  import torch
  dataset = FolderDataset(folder, size)
  loader = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=os.cpu_count(),
                                       multiprocessing_context='spawn')
  start = time.perf_counter()
  for _ in loader:
    pass
  return time.perf_counter() - start, len(dataset)


PREPARE = ('import sys; from cnnjax import preparation, sources; '
           'listing = sources.list_folder(sys.argv[1]); '
           'preparation.prepare(listing, sys.argv[2], int(sys.argv[3]), False); '
           'status = dict(line.split(":", 1) for line in open("/proc/self/status")); '
           'print(int(status["VmHWM"].split()[0]))')  # this program's own peak (ru_maxrss counts the parent's too)


def cnnjax_pass(folder: str, size: int, target: str) -> tuple[float, int, int]:
  """(seconds, images, peak resident KiB) of one preparation of the folder, in a process of its own (its start
  included; its decoding threads share its memory)."""
  shutil.rmtree(target, ignore_errors=True)
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, '-c', PREPARE, folder, target, str(size)], capture_output=True, text=True,
                        cwd=ROOT, check=True)
  seconds = time.perf_counter() - start
  with open(os.path.join(target, 'info.json')) as f:
    images = sum(json.load(f)['num_examples'].values())
  return seconds, images, int(proc.stdout.split()[-1])


def disk_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(directory) for n in names)


def main(argv):
  del argv
  from cnnjax import stamp
  files_total = sum(len(names) for _, _, names in os.walk(FLAGS.folder))
  seconds = {'cnnjax': [], 'torch DataLoader (ImageFolder)': []}
  with tempfile.TemporaryDirectory(prefix='cnnjax-prepare-') as scratch:
    target = os.path.join(scratch, 'arrays')
    for _ in range(FLAGS.rounds):
      s, images, parent_kib = cnnjax_pass(FLAGS.folder, FLAGS.size, target)
      seconds['cnnjax'].append(s)
      t, samples = torch_pass(FLAGS.folder, FLAGS.size)
      seconds['torch DataLoader (ImageFolder)'].append(t)
    on_disk = disk_bytes(target)
  decoded = images * FLAGS.size * FLAGS.size * 3
  rates = {'cnnjax': images / statistics.median(seconds['cnnjax']),
           'torch DataLoader (ImageFolder)': samples / statistics.median(seconds['torch DataLoader (ImageFolder)'])}
  result = {**stamp.stamp(), 'folder': FLAGS.folder, 'files': files_total, 'images_prepared': images,
            'size': FLAGS.size, 'rounds': FLAGS.rounds, 'cores': os.cpu_count(),
            'images_per_second_median': {k: round(v, 1) for k, v in rates.items()},
            'ratio_cnnjax_to_torch': round(rates['cnnjax'] / rates['torch DataLoader (ImageFolder)'], 3),
            'seconds': {k: [round(x, 2) for x in v] for k, v in seconds.items()},
            'prepared_bytes_on_disk': on_disk, 'decoded_images_bytes': decoded,
            'peak_resident_MiB_of_the_preparing_process': round(parent_kib / 1024, 1),
            'peak_resident_of_preparing_process_to_decoded_images': round(parent_kib * 1024 / decoded, 3)}
  print(json.dumps(result, indent=1))
  stamp.write(FLAGS.out, result)


if __name__ == '__main__':
  app.run(main)
