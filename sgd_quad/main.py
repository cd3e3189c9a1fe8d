"""Launcher: parses `--config` and `--workdir` and trains.

  python -m sgd_quad.main --config=configs/digits.py --workdir=/tmp/digits

Any config field can be overridden, e.g. `--config.num_steps=500`. Bad
config values end the program with one line naming the field, before anything
is compiled or written.
"""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sgd_quad import trainer
from sgd_quad.errors import ConfigError
from sgd_quad.workdir_lock import WorkdirBusyError

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file in configs/.', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Directory for checkpoints, metrics and TensorBoard files.'
)
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(std_logging.Filter):
  """Drops INFO records of orbax, whose per-save chatter hides our lines."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno > std_logging.INFO or (
      '/orbax/' not in record.pathname
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, WorkdirBusyError) as e:
    _fail(e, code=2)
  except trainer.NonFiniteError as e:
    _fail(e, code=3)


def _fail(error: Exception, *, code: int):
  logging.error('%s', error)
  print(f'error: {error}', file=sys.stderr)
  sys.exit(code)


if __name__ == '__main__':
  app.run(main)
