"""cnnjax: a JAX/Flax research codebase for convolutional neural networks."""

__version__ = '0.1.0'


def load(workdir: str):
  """The classifier a trained run in ``workdir`` holds (``predict.load``): ``cnnjax.load(DIR).top([path])``."""
  from cnnjax import predict
  return predict.load(workdir)
