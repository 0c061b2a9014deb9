"""Conventions shared by every command: logging, user errors as one line, a JSON result line, and
the command-line flags more than one command takes (declared once, here, so they cannot drift).

User mistakes (ConfigError, DataError, CheckpointError) print `error: <message>` and exit 2, with
no traceback; a training run that cannot go on, an export that does not match PyTorch, or a failed
write (disk full) exits 1; one stopped by a signal (byol/base/stopping.py) 128 + its number. On success
the command's result is printed as one JSON object on the last line of stdout, for scripts and
people alike.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Callable

from byol.base.errors import CheckpointError, ConfigError, DataError, ExportError, Interrupted, TrainingError, WriteError
from byol.config import Config, from_dict, parse_overrides

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
    except (TrainingError, ExportError, WriteError) as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_status)     # 128 + signal: 130 SIGINT, 143 SIGTERM, 138 SIGUSR1
    if result is not None and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result), flush=True)


# ------------------------------------------------------------------ config overrides: one syntax
# Every command that reads a config takes `section.key=value` positional arguments (keys of
# config.yaml, values read as YAML); latent's `--set section.key=value` is the same thing spelled
# as a flag. They are checked against the schema before anything slow starts, so a typo is an
# `error:` line naming the key (exit 2) rather than a checkpoint load and a traceback later.
DEFAULT_CONFIG = "config.yaml"
CONFIG_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
OVERRIDES_HELP = "config overrides, e.g. trainer.max_epochs=1 data.root=/data (any key of config.yaml)"


def add_override_arguments(parser: argparse.ArgumentParser, help: str = OVERRIDES_HELP,
                           set_alias: bool = False) -> None:
    """Positional `section.key=value` overrides (args.overrides); set_alias adds `--set k=v` too."""
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help=help)
    if set_alias:
        parser.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="section.key=value",
                            help="the same as a positional override (repeatable; applied after the positional ones)")


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str = "YAML config (default: ./config.yaml)",
                         overrides_help: str = OVERRIDES_HELP) -> None:
    """--config FILE (default None: each command says what it falls back to) and the overrides."""
    parser.add_argument("--config", default=None, metavar="FILE", help=config_help)
    add_override_arguments(parser, overrides_help)


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse with overrides allowed before, between or after the flags; `--set` items are appended
    to args.overrides, so commands read one list."""
    args = parser.parse_intermixed_args(argv)
    if hasattr(args, "set_overrides"):
        args.overrides = [*getattr(args, "overrides", []), *args.set_overrides]
        del args.set_overrides
    return args


def check_overrides(overrides) -> list[str]:
    """The overrides as a list, once every key and value has been checked against the config schema
    (ConfigError naming the key, the valid keys, or the expected type). Each override is a single
    key, so checking it on top of the defaults is the same check the real config gets later."""
    overrides = [str(o) for o in overrides]
    from_dict(parse_overrides(overrides))
    return overrides


def looks_like_override(text: str) -> bool:
    """`section.key=value` with a real config section: for telling users an override landed where a
    path was expected (never to decide what an argument means)."""
    key, equals, _ = str(text).partition("=")
    return bool(equals) and "." in key and key.split(".", 1)[0] in CONFIG_SECTIONS


# ------------------------------------------------------------------ the flags several commands share
BATCH_SIZE = 256


def add_loader_arguments(parser: argparse.ArgumentParser) -> None:
    """--batch-size and --num-workers, with one meaning everywhere (None: the command decides)."""
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help="images per forward pass (byol.extract.extract_command and latent group rows the same way)")
    parser.add_argument("--num-workers", type=int, default=None, metavar="N",
                        help="DataLoader processes decoding images (default: automatic; byol.extract.extract_command: a "
                             "reader thread, or up to 4 processes for image folders; latent: this process)")


def add_device_arguments(parser: argparse.ArgumentParser, precisions: tuple[str, ...] = ()) -> None:
    """--device (and --precision when the command offers `precisions`, the first being the default)."""
    parser.add_argument("--device", default="auto",
                        help="auto (cuda:LOCAL_RANK when a GPU is visible, else cpu) | cpu | cuda | cuda:N")
    if precisions:
        parser.add_argument("--precision", choices=precisions, default=precisions[0],
                            help=f"{precisions[0]}: exact; others: autocast, faster, not bit-equal")


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow checkpoints that need pickle code to load (runs code from the file: "
                             "only for files from authors you trust)")


def add_overwrite_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# ------------------------------------------------------------------ a --device flag's value
def usable_device(preference: str, flag: str = "--device") -> str:
    """The device `flag` asked for, resolved on this machine ("auto" -> cuda:0 or cpu), or a
    ConfigError naming the flag."""
    from byol.base.distributed import DeviceError, resolve_device
    try:
        return str(resolve_device(preference))
    except DeviceError as e:
        raise e.for_setting(flag, f"{flag} ") from None
