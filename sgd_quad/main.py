"""Launcher: parses `--config` and `--workdir` and trains.

  python -m sgd_quad.main --config=configs/digits.py --workdir=/tmp/digits

Any config field can be overridden, e.g. `--config.num_steps=500`. Bad
config values, flags or config files end the program with one `error:` line
naming the field, before anything is compiled or written. Exit status: 2 bad
input or a busy workdir, 3 divergence, 4 a workdir that cannot be written.

Multi-process runs start every process with the same flags; on a TPU pod,
under SLURM's `srun` or in a Kubernetes indexed job JAX finds its peers
itself, elsewhere add `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` (see `sgd_quad.distributed`).
"""

import functools
import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sgd_quad import checkpoint, config_lib, distributed, trainer
from sgd_quad.errors import ConfigError, WorkdirError
from sgd_quad.workdir_lock import WorkdirBusyError

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file in configs/.', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Directory for checkpoints, metrics and TensorBoard files.'
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address',
  None,
  'host:port of process 0 in a multi-process run (not needed on TPU pods, '
  'SLURM or Kubernetes, where JAX detects it).',
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', None, 'Processes in a multi-process run.'
)
_PROCESS_ID = flags.DEFINE_integer(
  'process_id', None, 'This process, 0 .. num_processes - 1.'
)
_STARTUP_TIMEOUT = flags.DEFINE_float(
  'distributed_timeout_s',
  300.0,
  'Seconds to wait for the coordinator and all processes to join.',
)
flags.mark_flags_as_required(['config', 'workdir'])


class _NoBackendProbe(std_logging.Filter):
  """Drops JAX's INFO line about backends this machine lacks (libtpu, say)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (
      record.levelno > std_logging.INFO
      or not record.getMessage().startswith('Unable to initialize backend')
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(checkpoint.QuietOrbax())
  logging.get_absl_handler().addFilter(_NoBackendProbe())
  sys.unraisablehook = _quiet_closed_loops(sys.unraisablehook)
  try:
    distributed.initialize(
      _COORDINATOR.value,
      _NUM_PROCESSES.value,
      _PROCESS_ID.value,
      timeout_s=_STARTUP_TIMEOUT.value,
      config=_CONFIG.value,
    )
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (
    ConfigError,
    WorkdirBusyError,
    distributed.DistributedStartupError,
  ) as e:
    _fail(e, code=2)
  except trainer.NonFiniteError as e:
    _fail(e, code=3)
  except WorkdirError as e:
    # Exit at once: orbax's abandoned writes would print tracebacks while
    # Python shuts down. The trainer has already closed every file.
    _fail(e, code=4, abandon_threads=True)


def _quiet_closed_loops(previous):
  """An unraisable-exception hook that drops 'Event loop is closed'.

  When a checkpoint save fails, orbax closes its event loop while tensorstore
  finishes the other writes, whose callbacks then cannot reach the loop. The
  save's failure is reported once; these would add a traceback per write.
  """

  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
      return
    previous(unraisable)

  return hook


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag or config file ends in one line."""
  path = _config_path(argv)
  if path and not os.path.isfile(path):
    _fail(
      f'--config: no config file at {path!r} (from {os.getcwd()}); allowed: '
      'a Python file defining get_config(), e.g. configs/digits.py',
      code=2,
    )
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # absl, config_flags and config files raise anything
    _fail(_flag_error(argv, e), code=2)


def _config_path(argv: list[str]) -> str | None:
  """The file of `--config=FILE[:ARGS]`, if given."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1].split(':', 1)[0]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1].split(':', 1)[0]
  return None


def _flag_error(argv: list[str], error: Exception) -> str:
  """One line naming the bad flag or field and what is allowed."""
  for arg in argv[1:]:
    name = arg.lstrip('-').split('=', 1)[0]
    if name.startswith(('config.', 'noconfig.')):
      try:
        config_lib.check_field_name(name.split('.', 1)[1])
      except ConfigError as e:
        return str(e)
  text = str(error).strip() or type(error).__name__
  if 'Error whilst parsing config file' in text:
    return f'--config: {text.splitlines()[-1]}'
  if not isinstance(error, flags.Error):
    return f'--config: {type(error).__name__}: {text.splitlines()[0]}'
  line = text.splitlines()[0]
  match = re.match(r'flag --config\.([\w.]+)=(.*?): (.*)', line)
  if match:
    field, value, reason = match.groups()
    try:
      default = functools.reduce(
        lambda c, k: c[k], field.split('.'), _CONFIG.value
      )
    except Exception:  # the config did not load: keep absl's line
      return line
    return (
      f'config.{field}: cannot read {value!r} ({reason}); allowed: a value '
      f'of type {type(default).__name__}, like the default {default!r}'
    )
  return line


def _fail(error: Exception | str, *, code: int, abandon_threads: bool = False):
  # One line on stderr; absl's handler writes there too, so it is not logged.
  print(f'error: {error}', file=sys.stderr, flush=True)
  if abandon_threads:
    sys.stdout.flush()
    os._exit(code)
  sys.exit(code)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
