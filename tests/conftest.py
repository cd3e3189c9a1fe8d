"""Shared fixtures: the prepared digits and one briefly trained run."""

import os
import shutil
import tempfile

# Many tests (and their subprocesses, which inherit the environment) compile
# the same tiny train step; a compilation cache shared by the session saves
# most of that. Set before JAX is imported.
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='sgd_quad_jax_cache_')
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import pytest  # noqa: E402

from configs import digits as digits_config  # noqa: E402
from sgd_quad import data, trainer  # noqa: E402


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A tfds data dir holding the prepared bundled digits."""
  path = tmp_path_factory.mktemp('tfds')
  data.prepare_digits(os.fspath(path))
  return os.fspath(path)


def tiny_config(data_dir: str, **overrides):
  """The digits config shrunk to seconds: a tiny ResNet, 40 steps."""
  config = digits_config.get_config()
  config.data.data_dir = data_dir
  config.data.num_workers = 0
  config.model.name = 'resnet_tiny'
  config.batch_size = 64
  config.eval_batch_size = 128
  config.data.train_eval_examples = 256
  config.num_steps = 40
  config.log_every = 10
  config.eval_every = 20
  config.checkpoint.every = 20
  config.schedule.warmup_steps = 5
  config.averaging.swa_start = 10
  config.averaging.two_point_gaps = (10,)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, digits_dir):
  """A 40-step run of the tiny config: (workdir, config, final results)."""
  workdir = os.fspath(tmp_path_factory.mktemp('run'))
  config = tiny_config(digits_dir)
  results = trainer.train_and_evaluate(config, workdir)
  return workdir, config, results


@pytest.fixture
def run_copy(tmp_path, trained_run):
  """A private copy of the trained run's workdir, free to modify."""
  workdir, config, results = trained_run
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  return os.fspath(copy), config.copy_and_resolve_references(), results
