"""Errors that sgd_quad raises for bad input and an unusable workdir.

Every check of user input raises `ConfigError`, whose message is one line that
names the offending field and what is allowed, so the launcher can print it and
exit before anything is compiled or written. A workdir that cannot be written
raises `WorkdirError`, also one line.
"""


class ConfigError(ValueError):
  """A config field holds a value that sgd_quad cannot run with.

  Attributes:
    field: dotted path of the field, for example 'optimizer.learning_rate'.
    message: what is wrong and what is allowed.
  """

  def __init__(self, field: str, message: str):
    self.field = field
    self.message = message
    super().__init__(f'config.{field}: {message}')


class WorkdirError(OSError):
  """The workdir cannot be written (a file in its place, a full disk).

  Raised for a file where the workdir or one of its directories belongs, a
  full disk or file-size limit, or a lost mount. The message is one line
  saying what failed and which checkpoint a relaunch resumes from; nothing
  half-written is ever marked complete.
  """
