"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""


class RmjaxError(Exception):
  """Base class for errors caused by bad input (files, configs, specs), not by bugs."""


class DataError(RmjaxError, ValueError):
  """Malformed data; the message names `file:line: field ...`."""

  def __init__(self, path, line, field, message):
    self.path, self.line, self.field = path, line, field
    where = f"{path}:{line}" if line is not None else f"{path}"
    super().__init__(f"{where}: field '{field}': {message}" if field else f"{where}: {message}")


class ConfigError(RmjaxError, ValueError):
  """Bad configuration (unknown key, mesh that does not fit the devices, unknown preset...)."""


class CheckpointError(RmjaxError, ValueError):
  """Missing or incompatible weights (file absent, wrong architecture, shape mismatch)."""


class TrainingDiverged(RmjaxError, FloatingPointError):
  """A non-finite loss: the run stops, the last good checkpoint is kept."""
