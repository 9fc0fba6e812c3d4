"""Decoding one image file into the model's square input: pillow reads it (JPEG, PNG, BMP, GIF's first frame,
WebP where pillow has it), converts it to RGB or grayscale (palette, RGBA, CMYK and 16-bit modes included), scales
its short side to the target and crops the centre. Preparation runs it on a thread per core: pillow releases the
GIL while it decodes and resizes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESAMPLE = Image.Resampling.BILINEAR  # antialiased when shrinking, as torchvision's Resize on PIL images


def fit(image: Image.Image, size: int, grayscale: bool = False) -> tuple[np.ndarray, bool]:
  """(uint8 [size, size, C], whether it was upscaled): ``image`` converted to RGB (C = 3) or grayscale (C = 1), its
  short side scaled to ``size`` and its centre cropped square."""
  image.seek(0)  # an animation's first frame
  if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
    image = image.convert('RGBA')
    background = Image.new('RGBA', image.size, (255, 255, 255, 255))  # transparent pixels on white
    image = Image.alpha_composite(background, image)
  image = image.convert('L' if grayscale else 'RGB')
  upscaled = min(image.size) < size
  fitted = ImageOps.fit(image, (size, size), method=RESAMPLE, centering=(0.5, 0.5))
  array = np.asarray(fitted, np.uint8)
  return (array[..., None] if grayscale else array), upscaled


def decode(source: str | bytes, size: int, grayscale: bool = False) -> tuple[np.ndarray | None, bool, str]:
  """(the fitted image or None, upscaled, why it failed: '' when it did not) of ``source``, a file's path or an
  encoded image's bytes (a TFDS record's): one that is not an image, or is cut short, fails instead of raising, so
  that preparation can count and skip it."""
  try:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
      image.load()  # decodes every byte now: a truncated file fails here, not later
      array, upscaled = fit(image, size, grayscale)
    return array, upscaled, ''
  except UnidentifiedImageError:
    return None, False, 'not an image'
  except Exception as e:  # noqa: BLE001 - any failure to decode is the file's, reported and skipped
    return None, False, (str(e).splitlines() or [type(e).__name__])[0][:120]
