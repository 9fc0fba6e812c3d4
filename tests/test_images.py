"""Decoding one file into the model's square input: short side scaled, centre cropped, modes converted, bad files
reported instead of raised."""

import numpy as np
from PIL import Image

from cnnjax import images


def test_the_short_side_is_scaled_and_the_centre_cropped():
  """A 40 x 20 image whose left, middle and right quarters differ: fitted to 10 x 10 it keeps the middle half."""
  pixels = np.zeros((20, 40, 3), np.uint8)
  pixels[:, :10], pixels[:, 10:30], pixels[:, 30:] = 255, 128, 0
  out, upscaled = images.fit(Image.fromarray(pixels), 10)
  assert out.shape == (10, 10, 3) and not upscaled
  assert np.abs(out[:, 2:8].astype(int) - 128).max() <= 2  # the middle; the edges blend with their neighbours


def test_modes_are_converted_transparency_onto_white_and_small_images_upscaled(tmp_path):
  rgba = Image.new('RGBA', (8, 6), (255, 0, 0, 0))  # fully transparent red
  out, upscaled = images.fit(rgba, 12)
  assert upscaled and out.shape == (12, 12, 3) and (out == 255).all()  # white where nothing is drawn
  gray, _ = images.fit(Image.new('RGB', (16, 16), (30, 60, 90)), 8, grayscale=True)
  assert gray.shape == (8, 8, 1) and abs(int(gray[0, 0, 0]) - round(0.299 * 30 + 0.587 * 60 + 0.114 * 90)) <= 1
  frames = [Image.new('P', (10, 10), i) for i in (3, 9)]
  frames[0].save(tmp_path / 'anim.gif', save_all=True, append_images=frames[1:])
  cmyk = tmp_path / 'cmyk.jpg'
  Image.new('CMYK', (10, 10), (0, 255, 255, 0)).save(cmyk)
  first, _, why = images.decode(str(tmp_path / 'anim.gif'), 10)
  red, _, _ = images.decode(str(cmyk), 10)
  assert why == '' and first.shape == (10, 10, 3)
  assert red[5, 5, 0] > 200 and red[5, 5, 1] < 60  # CMYK (0, 1, 1, 0) is red


def test_a_file_that_is_not_an_image_or_is_cut_short_is_reported(tmp_path):
  (tmp_path / 'notes.jpg').write_text('hello')
  Image.new('RGB', (64, 64), (10, 20, 30)).save(tmp_path / 'full.jpg')
  data = (tmp_path / 'full.jpg').read_bytes()
  (tmp_path / 'cut.jpg').write_bytes(data[:len(data) // 2])
  assert images.decode(str(tmp_path / 'notes.jpg'), 8) == (None, False, 'not an image')
  array, _, why = images.decode(str(tmp_path / 'cut.jpg'), 8)
  assert array is None and 'truncated' in why.lower()
