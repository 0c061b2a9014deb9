"""Conventions shared by every command: logging, user errors as one line, a JSON result line.

User mistakes (ConfigError, DataError, CheckpointError) print `error: <message>` and exit 2, with
no traceback; a stopped training run or a failed write (disk full) exits 1; an interrupted one 130. On success the command's
result is printed as one JSON object on the last line of stdout, for scripts and people alike.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Callable

from byol.config import ConfigError
from byol.errors import CheckpointError, DataError, Interrupted, TrainingError, WriteError

USER_ERRORS = (ConfigError, DataError, CheckpointError)


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


def user_message(e: BaseException) -> str:
    """The error's own message. A DataLoader worker re-raises our errors wrapped in its traceback
    ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): keep the last line."""
    text = str(e)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        name = f"{type(e).__module__}.{type(e).__name__}: "
        text = last[len(name):] if last.startswith(name) else last
    return text


def run_command(main: Callable[[], dict | None]) -> None:
    """Call `main`; print its result dict as the last JSON line; map errors to exit codes."""
    setup_logging()
    try:
        result = main()
    except USER_ERRORS as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(2)
    except (TrainingError, WriteError) as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(130)
    if result is not None and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result), flush=True)
