"""Durations as people write them ('90s', '45m', '2h', '1h30m', or seconds) and back.

The config schema (byol/config.py) parses `trainer.max_time` and `trainer.max_time_margin` with
`parse_duration` once, when a config loads, so every later reader sees seconds (a float) or
"slurm"; logs and summaries print seconds with `describe`.
"""
from __future__ import annotations

import math
import re

from byol.base.errors import ConfigError

UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")
EXAMPLES = "90s, 45m, 2h, 1h30m, a number of seconds"


def parse_duration(value, key: str, also: str = "") -> float:
    """'90s', '45m', '2h', '1h30m', 90 or '90' -> seconds; ConfigError naming `key` otherwise
    (`also`: the key's other accepted values, for the message, e.g. ", 0 (off) or slurm")."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text or len({u for _, u in parts}) != len(parts):
                raise ConfigError(f"config key '{key}': {value!r} is not a duration; use e.g. {EXAMPLES}{also}") from None
            seconds = sum(float(n) * UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"config key '{key}': must be >= 0 (0 = off), got {value!r}")
    return seconds


def describe(seconds: float) -> str:
    """4530 -> '1h15m30s', 90 -> '1m30s', 0.5 -> '0.5s'."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    s = round(seconds)
    h, m, sec = s // 3600, s // 60 % 60, s % 60
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"
