"""The exception types commands map to exit codes (byol/command_line.py's `run_command`).

User mistakes (ConfigError, DataError and StoreError, CheckpointError) print their one-line
message, no traceback, and exit 2; each message names the file or key at fault and says what to do.
Work that cannot go on (TrainingError, ExportError, WriteError) prints its message and exits 1;
Interrupted exits 128 + the signal number.
"""


class ConfigError(ValueError):
    """A user mistake in a config file, override or flag; the message names the key and what to do."""


class DataError(ValueError):
    """A dataset is missing, truncated or unreadable."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, untrusted or not of a known format."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class ExportError(RuntimeError):
    """An exported model does not reproduce the PyTorch encoder (other shape, or beyond --tolerance)."""


class StoreError(DataError):
    """A feature store is missing, corrupt, or was written with other settings."""


class WriteError(RuntimeError):
    """A file could not be written (disk full, quota, permissions); the previous file is kept."""


class Interrupted(Exception):
    """A stop signal (SIGINT, SIGTERM, SIGUSR1) arrived and the command stopped at a safe point with
    its work kept (training: a checkpoint, `.step` and `.path` tell which; extraction: finished
    shards). Entry points print the message and exit `.exit_status` = 128 + the signal number
    (130 SIGINT, 143 SIGTERM, 138 SIGUSR1); see byol/base/stopping.py."""

    def __init__(self, message: str, signum: int, step: int | None = None, path=None):
        super().__init__(message)
        self.signum, self.step, self.path = int(signum), step, path

    @property
    def exit_status(self) -> int:
        return 128 + self.signum
