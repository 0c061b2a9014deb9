"""Errors for user mistakes. Entry points print their one-line message (no traceback) and exit 2.

Each message names the file or key at fault and says what to do.
"""


class DataError(ValueError):
    """A dataset is missing, truncated or unreadable."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, untrusted or not of a known format."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class StoreError(DataError):
    """A feature store is missing, corrupt, or was written with other settings."""


class WriteError(RuntimeError):
    """A file could not be written (disk full, quota, permissions); the previous file is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived during training; a checkpoint was written. `.step` tells where."""

    def __init__(self, step: int, path):
        super().__init__(f"interrupted at step {step}; checkpoint written to {path}. "
                         f"Continue with: python main.py --resume {path.parent.parent}")
        self.step, self.path = step, path
