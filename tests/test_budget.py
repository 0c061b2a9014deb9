"""Training to a time budget (trainer.max_time, byol/pretrain/budget.py).

A fake clock (`budget.clock`) advances by a set number of seconds each training step, so the
budget's arithmetic is checked exactly on tiny data: the chosen total ends the schedules at the
budget, a slow first estimate is corrected without a jump in the LR, --resume keeps the total,
torchrun ranks follow rank 0, and bad values are one-line errors naming the key.
"""
import json
import math
import os
import signal
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
import torch

from byol.base import durations
import byol.pretrain.loop as loop
from byol.base.errors import ConfigError, Interrupted
from byol.config import load_config
from byol.pretrain import budget
from byol.pretrain.checkpoint import load_training_checkpoint, resume_config
from byol.pretrain.loop import train
from byol.pretrain.optim import Schedule, base_ema_rate
from byol.pretrain.train_command import config_for_run
from byol.pretrain.train_command import main as train_main

import warm_process
from testkit import REPO, TINY, free_port, run_main

# 480 digits at 16 px, batch 16: 30 steps an epoch; max_steps is the upper bound the budget stays under
ARGS = [*TINY, "data.max_images=480", "data_transforms.input_shape=(16,16,3)", "trainer.max_steps=1000"]
REAL_STEP = loop.train_step


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def install_clock(monkeypatch, seconds_per_step) -> FakeClock:
    """budget.clock = a fake clock that each training step advances by seconds_per_step(step)."""
    clock = FakeClock()
    monkeypatch.setattr(budget, "clock", clock)

    def timed_step(run, images, step, losses):
        clock.now += seconds_per_step(step)
        return REAL_STEP(run, images, step, losses)
    monkeypatch.setattr(loop, "train_step", timed_step)
    return clock


def rows(run) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "lr" in r]


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """30 s of budget at 1 s a step, m=auto: (run dir, summary, fake seconds at the end)."""
    run = tmp_path_factory.mktemp("budget") / "run"
    with pytest.MonkeyPatch.context() as mp:
        clock = install_clock(mp, lambda step: 1.0)
        summary = train(load_config(None, [*ARGS, f"trainer.run_dir={run}", "trainer.max_time=30s", "trainer.m=auto"]))
    return run, summary, clock.now


def test_the_chosen_total_ends_the_schedules_at_the_budget(budget_run):
    run, summary, seconds = budget_run
    assert summary["steps"] == summary["time_budget"]["steps"] == 30 and 29 <= seconds <= 30
    lrs = [r["lr"] for r in rows(run)]
    assert len(lrs) == 30 and lrs[-1] <= 0.05 * lrs[0]                      # the cosine has run out
    saved = load_training_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["config"]["trainer"]["max_steps"] == 30 and not saved["budget"]["estimating"]
    assert load_config(run / "config.yaml").trainer.max_steps == 30        # the run's config records it
    # m=auto takes its base rate from the chosen total, not from the upper bound of 1,000 steps
    schedule = Schedule(30, 0, lrs[0], "auto").restored(saved["budget"]["schedule"])
    assert schedule.base_tau == base_ema_rate("auto", 30) != base_ema_rate("auto", 1000)
    for row in rows(run)[10:]:                       # after the total was chosen
        assert row["tau"] == pytest.approx(schedule.tau(row["step"] - 1), abs=1e-12)


def test_a_budget_changes_no_setting_but_the_step_count(budget_run):
    """trainer.max_time fits the schedules to the time and nothing else: the run's saved config is the
    config it was given, with max_steps set to the chosen total (no hidden batch, LR, warmup or tau)."""
    run, summary, _ = budget_run
    given = load_config(None, [*ARGS, f"trainer.run_dir={run}", "trainer.max_time=30s", "trainer.m=auto"])
    assert load_config(run / "config.yaml") == replace(given, trainer=replace(given.trainer, max_steps=30))
    assert not (run / "config.yaml").read_text().startswith("#")              # no comment of changed keys
    for length in ("trainer.max_time=20m", "trainer.max_time=0s", "trainer.max_time=0m"):
        cfg, resume = config_for_run(REPO / "config.yaml", [length])
        assert (cfg, resume) == (load_config(REPO / "config.yaml", [length]), None)


def test_with_m_auto_tau_switches_once_from_the_upper_bounds_base_to_the_budgets(budget_run):
    """What docs/how-to/time-budget-slurm.md says happens: until the first estimate tau follows the upper bound's base rate (1,000
    steps here), then the chosen total's (30 steps), once; otherwise it only rises (its cosine to 1)."""
    run, _, _ = budget_run
    taus = [r["tau"] for r in rows(run)]
    upper, chosen = base_ema_rate("auto", 1000), base_ema_rate("auto", 30)
    assert upper - chosen > 0.004                                     # two different base rates
    assert taus[0] == pytest.approx(upper, abs=1e-4)                  # step 1: the upper bound's schedule
    assert sum(b < a for a, b in zip(taus, taus[1:])) == 1            # the one switch down, at the estimate


def test_a_budget_of_zero_is_no_budget():
    for off in ("0", "0s", "0m", "0h0m"):
        assert budget.resolve(load_config(None, [f"trainer.max_time={off}"]).trainer) == (0.0, "")


def test_a_slow_first_estimate_is_corrected_without_a_jump_in_the_lr(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "CHECKS", (0.05, 0.2, 0.3))       # a short run still has room to correct
    clock = install_clock(monkeypatch, lambda step: 2.5 if step < 4 else 1.0)   # slow start-up steps
    changes = []                                                    # (step, total) where the total changed
    real_follow = loop.follow_budget

    def spy(run, step, received):
        real_follow(run, step, received)
        if not changes or changes[-1][1] != run.schedule.total:
            changes.append((step, run.schedule.total))
    monkeypatch.setattr(loop, "follow_budget", spy)
    run = tmp_path / "run"
    summary = train(load_config(None, [*ARGS, f"trainer.run_dir={run}", "trainer.max_time=60s"]))
    (_, upper), (first_step, first), (_, final) = changes
    assert upper == 1000 and first < 0.6 * final                      # upper bound, slow estimate, corrected
    assert summary["steps"] == final and 59 <= clock.now <= 60
    lrs = [r["lr"] for r in rows(run)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))                   # no jump up at the correction ...
    steepest = math.pi / 2 * lrs[0] / (first - first_step)             # the first estimate's cosine at its steepest
    assert max(a - b for a, b in zip(lrs, lrs[1:])) <= steepest * 1.01  # ... nor down
    assert lrs[-1] <= 0.05 * lrs[0]


def test_resume_keeps_the_chosen_total(budget_run, tmp_path, monkeypatch):
    reference, _, _ = budget_run
    run = tmp_path / "run"
    install_clock(monkeypatch, lambda step: 1.0)
    real_lr = loop.learning_rate_at

    def lr_with_sigterm(step, *args):                 # a SIGTERM during step 15
        if step == 15:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr(step, *args)
    monkeypatch.setattr(loop, "learning_rate_at", lr_with_sigterm)
    with pytest.raises(Interrupted):
        train(load_config(None, [*ARGS, f"trainer.run_dir={run}", "trainer.max_time=30s", "trainer.m=auto"]))
    monkeypatch.setattr(loop, "learning_rate_at", real_lr)

    install_clock(monkeypatch, lambda step: 7.0)     # a slower machine: measuring again would choose fewer
    cfg = resume_config(run)
    assert cfg.trainer.max_steps == 30
    assert train(cfg, resume=run)["steps"] == 30
    mine = load_training_checkpoint(run / "checkpoints" / "last.pt")["online"]
    for key, value in load_training_checkpoint(reference / "checkpoints" / "last.pt")["online"].items():
        assert torch.allclose(value.float(), mine[key].float(), atol=1e-5), key
    # the finished run resumed with a config that lacks the saved max_steps (train(cfg, resume=RUN), as
    # learning_check does): max_epochs' upper bound is no new total, so nothing more is trained
    fresh = load_config(None, [*ARGS, f"trainer.run_dir={run}", "trainer.max_time=30s", "trainer.m=auto",
                               "trainer.max_steps=0"])
    assert train(fresh, resume=run)["steps"] == 30
    assert load_training_checkpoint(run / "checkpoints" / "last.pt")["step"] == 30


@pytest.mark.long
def test_two_torchrun_processes_follow_rank_0s_total(tmp_path):
    run = tmp_path / "ddp"
    # the launcher a warm fork (tests/warm_process.py), its two workers cold processes
    out = warm_process.run(["-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
                            "main.py", *ARGS, f"trainer.run_dir={run}", "trainer.batch_size=8",
                            "trainer.max_time=6s", "trainer.device=cpu"], cwd=REPO, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = out.last_json
    assert summary["world_size"] == 2 and summary["ranks_in_sync"]            # same steps, same LR on both
    assert summary["steps"] == summary["time_budget"]["steps"] == load_config(run / "config.yaml").trainer.max_steps
    assert out.stderr.count(f"--resume keeps its {summary['steps']} steps): {summary['steps']} steps chosen at") == 1


@pytest.mark.parametrize("override, words", [
    ("trainer.max_time=soon", "config key 'trainer.max_time': 'soon' is not a duration"),
    ("trainer.max_time=-5", "config key 'trainer.max_time': must be >= 0"),
    ("trainer.max_time=slurm", "config key 'trainer.max_time': slurm needs a Slurm job"),
    ("trainer.max_time_margin=lots", "config key 'trainer.max_time_margin': 'lots' is not a duration"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, words, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOBID", raising=False)
    code, _, err = run_main(train_main, [*ARGS, f"trainer.run_dir={tmp_path / 'run'}", override], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: {words}"), err


def test_durations():
    for text, seconds in [("90s", 90), ("45m", 2700), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), (90, 90),
                          ("120", 120), (0, 0)]:
        assert durations.parse_duration(text, "trainer.max_time") == seconds
    for bad in ("soon", "1h1h", "m", "-1m", "1d"):
        with pytest.raises(ConfigError, match="trainer.max_time"):
            durations.parse_duration(bad, "trainer.max_time")
        with pytest.raises(ConfigError, match="config key 'trainer.max_time'"):     # the schema's one parse
            load_config(None, [f"trainer.max_time={bad}"])
    assert durations.describe(5400) == "1h30m" and durations.describe(90) == "1m30s"


def fake_command(folder, name: str, output: str):
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)


def test_slurm_budget_is_the_jobs_time_left_less_the_margin(tmp_path):
    trainer = load_config(None, ["trainer.max_time=slurm", "trainer.max_time_margin=10m"]).trainer
    end = (datetime.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    env = {"PATH": str(tmp_path / "squeue"), "SLURM_JOB_ID": "42"}
    fake_command(tmp_path / "squeue", "squeue", end)
    seconds, label = budget.resolve(trainer, env)
    assert 3000 - 5 <= seconds <= 3000 and "job 42" in label and "squeue" in label
    env["PATH"] = str(tmp_path / "scontrol")                   # no squeue: scontrol's EndTime
    fake_command(tmp_path / "scontrol", "scontrol", f"JobId=42 StartTime=2024-01-01T00:00:00 EndTime={end} Deadline=N/A")
    assert math.isclose(budget.resolve(trainer, env)[0], seconds, abs_tol=5)
    fake_command(tmp_path / "scontrol", "scontrol", "JobId=42 EndTime=Unknown")     # no time limit
    with pytest.raises(ConfigError, match="trainer.max_time': Slurm job 42 reports no end time"):
        budget.resolve(trainer, env)


def test_one_slow_stretch_does_not_set_the_runs_length():
    # steps between host syncs: 20 at 1.0 s, 20 at 1.6 s (another process started), 40 at 1.0 s
    intervals = [(20, 20.0), (20, 32.0), (40, 40.0)]
    assert budget.typical_step_time(intervals) == 1.0          # a mean would say 1.15 s a step
    assert budget.typical_step_time([(2, 5.0), (1, 1.0)]) == 2.5   # a majority of slow steps is the rate
