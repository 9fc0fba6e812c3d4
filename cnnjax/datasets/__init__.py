"""Offline TFDS builders; importing this package registers `shapes` and `digits` with tfds."""

from cnnjax.datasets.digits import Digits
from cnnjax.datasets.shapes import Shapes, ShapesConfig

__all__ = ['Digits', 'Shapes', 'ShapesConfig']
