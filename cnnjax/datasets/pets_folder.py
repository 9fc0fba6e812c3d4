r"""A small photo-like cats-vs-dogs image folder, for machines without Kaggle's: two class folders of JPEG files
of natural sizes and aspect ratios (a textured background, an animal of either kind: pointed ears and a warm coat
for a cat, drooping ears and a longer muzzle for a dog, with overlapping colours and poses), a few files in other
formats (grayscale, palette GIF, RGBA PNG, a tiny image) and a few bad files as the real folder has them (a text
file named .jpg, a truncated JPEG, an empty file, Thumbs.db).

  python -m cnnjax.datasets.pets_folder --out=/tmp/pets --per_class=500

The same seed writes the same files.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ('cat', 'dog')
BAD_FILES = 4  # written to the cat folder: not images, or cut short


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
  """Smooth colour fields with grain: a wall, a floor, a sofa."""
  coarse = rng.uniform(40, 220, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.uint8)
  field = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
  grain = rng.normal(0, 8, (height, width, 3))
  return Image.fromarray(np.clip(np.asarray(field, float) + grain, 0, 255).astype(np.uint8))


def _animal(draw: ImageDraw.ImageDraw, rng: np.random.Generator, kind: str, width: int, height: int) -> None:
  """A body, a head and ears; the kinds differ in ears, muzzle and coat colour, each drawn from ranges that
  overlap, so that the task is learnable but not trivial."""
  scale = rng.uniform(0.35, 0.7) * min(width, height)
  cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.4, 0.7) * height
  warm = rng.uniform(0.45, 1.0) if kind == 'cat' else rng.uniform(0.0, 0.6)
  coat = tuple(int(v) for v in np.array([200, 140, 70]) * warm + np.array([90, 90, 100]) * (1 - warm)
               + rng.normal(0, 20, 3))
  body = (cx - 0.6 * scale, cy - 0.1 * scale, cx + 0.6 * scale, cy + 0.5 * scale)
  draw.ellipse(body, fill=coat)
  hx, hy, r = cx + rng.uniform(-0.3, 0.3) * scale, cy - 0.35 * scale, 0.28 * scale
  draw.ellipse((hx - r, hy - r, hx + r, hy + r), fill=coat)
  for side in (-1, 1):
    if kind == 'cat':  # pointed, upright ears
      draw.polygon([(hx + side * 0.3 * r, hy - 0.7 * r), (hx + side * 0.95 * r, hy - 0.5 * r),
                    (hx + side * 0.75 * r, hy - 1.5 * r)], fill=coat)
    else:  # drooping ears beside the head, and a muzzle
      draw.ellipse((hx + side * 0.8 * r - 0.3 * r, hy - 0.6 * r, hx + side * 0.8 * r + 0.3 * r, hy + 0.7 * r),
                   fill=tuple(max(0, c - 40) for c in coat))
  if kind == 'dog':
    muzzle = tuple(min(255, c + 30) for c in coat)
    draw.ellipse((hx - 0.45 * r, hy + 0.1 * r, hx + 0.45 * r, hy + 0.75 * r), fill=muzzle)
  for side in (-1, 1):
    draw.ellipse((hx + side * 0.35 * r - 0.08 * r, hy - 0.15 * r, hx + side * 0.35 * r + 0.08 * r, hy),
                 fill=(20, 20, 20))


def photo(rng: np.random.Generator, kind: str) -> Image.Image:
  """One photo-like RGB image of ``kind`` at a natural size and aspect ratio."""
  width, height = int(rng.integers(180, 500)), int(rng.integers(150, 500))
  image = _background(rng, width, height)
  _animal(ImageDraw.Draw(image), rng, kind, width, height)
  return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))


def write(out: str, per_class: int, seed: int = 0) -> dict[str, int]:
  """Writes ``per_class`` images per class (and BAD_FILES bad files) into ``out``/<class>/; returns the count of
  images written per class."""
  rng = np.random.default_rng(seed)
  for kind in CLASSES:
    folder = os.path.join(out, kind)
    os.makedirs(folder, exist_ok=True)
    for i in range(per_class):
      image = photo(rng, kind)
      if i % 50 == 7:
        image.convert('L').save(os.path.join(folder, f'{kind}.{i}.jpg'), quality=85)
      elif i % 50 == 13:
        image.convert('P', palette=Image.Palette.ADAPTIVE).save(os.path.join(folder, f'{kind}.{i}.gif'))
      elif i % 50 == 21:
        image.convert('RGBA').save(os.path.join(folder, f'{kind}.{i}.png'))
      elif i % 50 == 33:
        image.resize((40, 30)).save(os.path.join(folder, f'{kind}.{i}.jpg'), quality=90)  # smaller than any target
      else:
        image.save(os.path.join(folder, f'{kind}.{i}.jpg'), quality=int(rng.integers(70, 96)))
  _bad_files(os.path.join(out, CLASSES[0]), rng)
  return dict.fromkeys(CLASSES, per_class)


def _bad_files(folder: str, rng: np.random.Generator) -> None:
  """What a downloaded folder holds beside its images: text named .jpg, a cut JPEG, an empty file, Thumbs.db."""
  with open(os.path.join(folder, 'cat.notes.jpg'), 'w') as f:
    f.write('not an image\n')
  cut = os.path.join(folder, 'cat.truncated.jpg')
  photo(rng, 'cat').save(cut, quality=90)
  with open(cut, 'r+b') as f:
    f.truncate(os.path.getsize(cut) // 3)
  open(os.path.join(folder, 'cat.empty.jpg'), 'w').close()
  with open(os.path.join(folder, 'Thumbs.db'), 'wb') as f:
    f.write(bytes(range(256)))


def main(argv: list[str] | None = None) -> None:
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='the folder to write (PATH/cat, PATH/dog)')
  parser.add_argument('--per_class', type=int, default=500)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  counts = write(args.out, args.per_class, args.seed)
  print(f'Wrote {sum(counts.values())} images ({", ".join(f"{n} {c}" for c, n in counts.items())}) and '
        f'{BAD_FILES} bad files to {args.out}')


if __name__ == '__main__':
  main()
