"""cnnjax.compiler: default XLA flags are added without overriding the user's, and change speed, not results."""

import json
import os
import subprocess
import sys

import numpy as np

from cnnjax import compiler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = next(iter(compiler.DEFAULT_XLA_FLAGS))

# Five SGD-momentum steps of the benchmark CNN (`mnist` experiment) on one fixed batch; prints losses and
# the final parameters. Run in a fresh process because XLA reads $XLA_FLAGS once.
STEPS = """
import json, sys
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp, numpy as np, optax
from cnnjax import models
from experiments import mnist
model = models.build_model(mnist.get_config().model, 10)
rng = np.random.default_rng(0)
x, y = jnp.asarray(rng.normal(size=(64, 28, 28, 1)), jnp.float32), jnp.asarray(rng.integers(0, 10, 64))
params = model.init(jax.random.key(0), x[:1])['params']
tx = optax.sgd(0.1, momentum=0.9)
opt = tx.init(params)
@jax.jit
def step(params, opt):
  loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({{'params': p}}, x), y).mean()
  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt = tx.update(grads, opt, params)
  return optax.apply_updates(params, updates), opt, loss
losses = []
for _ in range(5):
  params, opt, loss = step(params, opt)
  losses.append(float(loss))
flat = np.concatenate([np.ravel(p) for p in jax.tree.leaves(params)])
print(json.dumps({{'xla_flags': __import__('os').environ.get('XLA_FLAGS', ''), 'losses': losses,
                  'params': flat.tolist()}}))
"""


def _run_steps(xla_flags_env: str) -> dict:
  proc = subprocess.run([sys.executable, '-c', STEPS.format(root=ROOT)], capture_output=True, text=True,
                        env={**os.environ, 'XLA_FLAGS': xla_flags_env}, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_defaults_are_added_once_and_never_override_the_user(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  flags = compiler.set_default_xla_flags()
  assert flags.startswith('--xla_force_host_platform_device_count=2 ')
  assert flags.count(f'--{FLAG}=') == 1
  assert compiler.set_default_xla_flags() == flags
  monkeypatch.setenv('XLA_FLAGS', f'--{FLAG}=dot')
  assert compiler.set_default_xla_flags() == f'--{FLAG}=dot'
  monkeypatch.delenv('XLA_FLAGS')
  assert compiler.set_default_xla_flags(enabled=False) == ''
  assert 'XLA_FLAGS' not in os.environ


def test_default_flags_train_like_xlas_own_kernels(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  with_defaults = _run_steps(compiler.set_default_xla_flags())
  without = _run_steps('')
  assert FLAG in with_defaults['xla_flags'] and FLAG not in without['xla_flags']
  assert with_defaults['losses'][-1] < with_defaults['losses'][0]  # it trains
  np.testing.assert_allclose(with_defaults['losses'], without['losses'], rtol=1e-5)
  np.testing.assert_allclose(with_defaults['params'], without['params'], rtol=1e-4, atol=1e-6)
