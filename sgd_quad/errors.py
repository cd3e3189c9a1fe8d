"""Errors that sgd_quad raises for bad input.

Every check of user input raises `ConfigError`, whose message is one line that
names the offending field and what is allowed, so the launcher can print it and
exit before anything is compiled or written.
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
