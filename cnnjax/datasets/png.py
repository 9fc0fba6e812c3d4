"""Images as PNG bytes, encoded by pillow. TFDS encodes numpy images with TensorFlow; a builder that hands it the
bytes prepares without TensorFlow. PNG is lossless: decoded, the pixels are the array's."""

from __future__ import annotations

import io

import numpy as np


def encode(image: np.ndarray) -> bytes:
  """The PNG bytes of a uint8 [H, W, C] image (C = 1 or 3)."""
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format='PNG')
  return buffer.getvalue()
