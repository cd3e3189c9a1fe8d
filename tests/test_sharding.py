"""Data parallelism over 8 fake CPU devices matches one device.

The device count of a JAX process is fixed when JAX starts, so these checks
run in a subprocess with `--xla_force_host_platform_device_count=8`.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
  """
  import sys
  import jax
  import numpy as np
  sys.path[:0] = ['tests', '.']
  from conftest import tiny_config
  from sgd_quad import trainer

  assert jax.device_count() == 8
  config = tiny_config(sys.argv[1])

  def one_step(mesh):
    setup = trainer.build(config, mesh=mesh)
    state = trainer.init_state(setup)
    for t in range(1):
      batch = trainer._to_global(setup, setup.datasets.train.batch(t))
      state, metrics = setup.train_step(state, batch)
    assert setup.train_step._cache_size() == 1
    return jax.device_get((state.params, state.batch_stats, metrics))

  one = one_step(jax.make_mesh((1,), ('data',), devices=jax.devices()[:1]))
  eight = one_step(jax.make_mesh((8,), ('data',)))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)

  # Ghost batches: 8 groups of 8 on 8 devices equal 8 groups on 1 device.
  config.model.ghost_batch_size = 8
  one = one_step(jax.make_mesh((1,), ('data',), devices=jax.devices()[:1]))
  eight = one_step(jax.make_mesh((8,), ('data',)))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  print('SHARDING OK')
  """
)


def test_eight_devices_match_one(digits_dir):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  result = subprocess.run(
    [sys.executable, '-c', SCRIPT, digits_dir],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert 'SHARDING OK' in result.stdout, result.stderr[-3000:]
