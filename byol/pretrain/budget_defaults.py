"""Defaults for a time budget: the settings that learn the most in a short run, when trainer.max_time is set.

config.yaml keeps sthalles' values (SGD lr 0.03, 512-128 heads, tau 0.996, no warmup): they were set
for 80 GPU epochs. A time budget on a CPU is one or two epochs, and there other values learn more per
minute (the README's "Defaults for a time budget" table, CIFAR-10 at 5 and 20 CPU-minutes, every row
with its command). So when trainer.max_time is set, each key of BUDGET_DEFAULTS that you did not set
takes the budget's value:

  - a key counts as yours when the command line sets it, or when your config file sets it to a value
    other than the schema's default (byol/config.py). The shipped config.yaml restates the defaults,
    so its keys count only where you edited them;
  - the values that depend on the run's length follow the number of steps the budget picks:
    trainer.m=auto is tau = 1 - 3/sqrt(steps) in [0.9, 0.996] (byol/pretrain/optim.py), and the
    warmup is in epochs of that run;
  - the log says which values were chosen and why; RUN_DIR/config.yaml saves them (a comment at its
    top names them), so --resume continues with them and never applies this again.

Without trainer.max_time nothing here applies: config.yaml means what it always meant.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from byol.config import Config, from_dict, load_config, parse_overrides, to_dict

log = logging.getLogger("byol")


class BudgetDefault(NamedTuple):
    key: str          # section.key (as on the command line)
    value: object     # the value, or a function of the config (applied in table order) that gives it
    why: str          # what measurement chose it (README: "Defaults for a time budget")

    def for_config(self, cfg: Config):
        return self.value(cfg) if callable(self.value) else self.value


def _sgd_lr(cfg: Config) -> float | None:
    """SGD: 0.2 at batch 128, linear in the batch (Goyal et al. 2017) when you set the batch; None (keep
    the config's) for another optimizer you chose: this value was measured for SGD only."""
    return round(0.2 * cfg.trainer.batch_size / 128, 6) if cfg.optimizer.name == "sgd" else None


# CIFAR-10, 16 px views, ResNet-18, 5-minute budgets on a 2-core CPU, probes on 1,000/500 images a class
# (README "Defaults for a time budget": every row, with its command). config.yaml as it is: 35.3 linear
# / 30.7 kNN; these values together (with tau 0.99): 37.1 / 33.9. Not taken: Adam at byol-pytorch's 3e-4,
# LARS, 4096-256 heads, a 10x predictor LR, 32 px views (a quarter of the steps): none measured better.
BUDGET_DEFAULTS: tuple[BudgetDefault, ...] = (
    BudgetDefault("trainer.batch_size", 128, "64, 128 and 256 at the same LR per image tied within "
                  "noise; 128 is the short-budget recipe's (configs/short_cpu.yaml)"),
    BudgetDefault("optimizer.params.lr", _sgd_lr, "SGD 0.2 at batch 128 (linear in the batch): with this "
                  "table 37.1/33.9 where config.yaml's 0.03 gave 35.3/30.7; Adam 3e-4 and LARS measured no better"),
    BudgetDefault("optimizer.warmup_epochs", 0.1, "the short-budget recipe's warmup, measured within "
                  "this table's row, not alone"),
    BudgetDefault("trainer.m", "auto", "tau = 1 - 3/sqrt(steps): 0.9 in a CPU budget (measured no worse "
                  "than 0.99), the paper's 0.996 at long ones"),
)


def _flat(values: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and key != "kwargs":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def keys_set_by_user(config_file: str | Path | None, overrides: list[str]) -> set[str]:
    """Every key `overrides` gives, and every key `config_file` sets to a value other than the schema's
    default (compared after type conversion, so `(32,32,3)` and `[32, 32, 3]` are the same value)."""
    chosen = set(_flat(parse_overrides(overrides)))
    if config_file is not None:
        defaults = _flat(to_dict(Config()))
        from_file = _flat(to_dict(load_config(config_file)))
        chosen |= {key for key, value in from_file.items() if value != defaults.get(key)}
    return chosen


def _with(cfg: Config, key: str, value) -> Config:
    """`cfg` with the dotted `key` set to `value` (a nested dataclasses.replace)."""
    head, _, rest = key.partition(".")
    if not rest:
        return replace(cfg, **{head: value})
    return replace(cfg, **{head: _with(getattr(cfg, head), rest, value)})


def _get(cfg: Config, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def with_budget_defaults(cfg: Config, user_keys: set[str]) -> tuple[Config, list[BudgetDefault]]:
    """`cfg` with BUDGET_DEFAULTS applied to the keys not in `user_keys` (only when trainer.max_time
    is set), and the defaults that changed a value. Logs each choice and each key you kept."""
    if not cfg.trainer.max_time:
        return cfg, []
    applied, kept = [], []
    for default in BUDGET_DEFAULTS:
        if default.key in user_keys:
            kept.append(default)
            continue
        picked = default.for_config(cfg)        # None: not measured for this config (the LR, off SGD)
        if picked is not None and _get(cfg, default.key) != picked:
            cfg = _with(cfg, default.key, picked)
            applied.append(default)
    for d in applied:
        log.info("time budget %s: %s=%s (budget default: %s)", cfg.trainer.max_time, d.key, _get(cfg, d.key), d.why)
    if kept:
        log.info("time budget %s: kept your %s (explicit values win over the budget defaults)",
                 cfg.trainer.max_time, ", ".join(f"{d.key}={_get(cfg, d.key)}" for d in kept))
    return (from_dict(to_dict(cfg)) if applied else cfg), applied     # checked like any loaded config


def config_header(cfg: Config) -> str:
    """A comment for the top of RUN_DIR/config.yaml naming the keys that hold a budget default."""
    if not cfg.trainer.max_time:
        return ""
    same = [d for d in BUDGET_DEFAULTS if _get(cfg, d.key) == d.for_config(cfg)]
    if not same:
        return ""
    lines = [f"# trainer.max_time={cfg.trainer.max_time}: these keys hold the time-budget defaults "
             f"(byol/pretrain/budget_defaults.py), unless you set them to the same value:"]
    lines += [f"#   {d.key}={_get(cfg, d.key)}: {d.why}" for d in same]
    return "\n".join(lines) + "\n"
