"""cnnjax: a JAX/Flax research codebase for convolutional neural networks."""

__version__ = '0.1.0'
