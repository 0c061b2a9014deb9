"""Training to a time budget (`trainer.max_time`): the number of steps whose schedules end when
the user's time does.

Durations
    `90s`, `45m`, `2h`, `1h30m`, `1.5h` or a number of seconds; 0 = off (the default). `slurm`: the
    time left in the Slurm job this runs in (its end time as `squeue -h -j $SLURM_JOB_ID -o %e`
    reports it, else `scontrol show job`, else $SLURM_JOB_END_TIME) less `trainer.max_time_margin`
    (default 5m) for the last checkpoint and the export. The clock starts when `train()` starts, so
    data and network set-up count; so do checkpoints and kNN monitor passes.

The estimate (rank 0 measures and decides; every rank applies the decision at the same step)
    1. Until a total is chosen the schedules run over the upper bound U (trainer.max_steps, else
       max_epochs x steps per epoch; with a budget these are upper bounds). The steps that measure
       the rate are training steps: there is no separate probe.
    2. Measuring starts at the host sync after step 2 (the first steps carry start-up costs: loader
       workers, lazy initialisation, autotuning). Checkpoints and kNN passes are timed apart and
       left out of the step time.
    3. Checks at 1%, 4% and 10% of the budget (the first host sync after each, with at least 3
       measured steps). Each takes the typical step time so far (the step-weighted median of the
       step times between host syncs since measuring began: a transient slow-down of a shared
       machine does not set the run's length) and chooses the largest total T <= U with
           (T - step) x step time + the checkpoints and kNN passes due up to T  <=  time left,
       each extra at its mean measured cost (a kNN pass not yet seen: its images at a quarter of a
       training image's time; a checkpoint not yet seen: free). The first check gives the first
       estimate; the later ones correct it if it is more than 1% off; the 10% check fixes it.
    4. No jump: a new total takes effect at a step s as `Schedule.rebased(s, T)` (optim.py): the
       LR cosine and the EMA schedule keep the progress they had at s and spread the rest over the
       T - s remaining steps, so both curves stay continuous (only their slope changes). This
       allows a correction at any step, inside warmup or after it, and needs no separate "probe"
       phase with a frozen LR; warmup (set in epochs) is never stretched. Restricting corrections
       to the warmup instead would not work for the default warmup of 0. With trainer.m=auto the
       base EMA rate follows the chosen total, so a correction moves tau by the difference of two
       base rates (< 0.01 beyond 1,000 steps); the LR stays continuous.
    5. Ranks agree without a collective of their own: rank 0's decision (the total, and whether it
       is final) rides in the loss window's all-reduce at the next host sync (loop.LossWindow),
       where every rank applies it at that same step. While the total is not final, host syncs also
       come at the powers of two (2, 4, 8, ...) so the checks need not wait for log_every.
    6. Resume: the final total is written into the run's config as trainer.max_steps, and the
       schedule's anchor into every checkpoint; `--resume` continues the same schedule to the same
       end without measuring again (the budget belongs to the first start). A run stopped before
       its total was final goes on estimating with what was left of its first start's budget.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Callable

from byol.base.durations import describe
from byol.base.errors import ConfigError

clock: Callable[[], float] = time.monotonic     # the budget's clock (tests put a fake one here)
log = logging.getLogger("byol")

CHECKS = (0.01, 0.04, 0.10)     # fractions of the budget at which the total is estimated / corrected / fixed
MEASURE_FROM = 2                # the first steps carry start-up costs: the rate is measured after them
MIN_STEPS = 3                   # measured steps before the first estimate
TOLERANCE = 0.01                # a correction smaller than this (relative) keeps the current total
KNN_IMAGE_COST = 0.25           # a kNN image (one forward pass) vs a training image, until a pass is timed


# --------------------------------------------------------------------------- Slurm
def _end_time(text: str) -> float | None:
    """Slurm's end time ('2024-05-01T14:32:10', local time) as a UNIX timestamp; None for 'Unknown', 'N/A' ..."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def slurm_end_time(job: str, env: dict) -> tuple[float | None, str]:
    """(the job's end time as a UNIX timestamp or None, where it came from). Asks squeue, then
    scontrol, then reads $SLURM_JOB_END_TIME (set by recent Slurm versions)."""
    env = {**env, "SLURM_TIME_FORMAT": "standard"}          # the ISO format _end_time reads
    queries = [(["squeue", "-h", "-j", job, "-o", "%e"], lambda out: out.strip().splitlines()[0]),
               (["scontrol", "show", "job", job], lambda out: re.search(r"EndTime=(\S+)", out).group(1))]
    for cmd, pick in queries:
        if shutil.which(cmd[0], path=env.get("PATH")) is None:
            continue
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
            end = _end_time(pick(done.stdout)) if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError, AttributeError):
            end = None
        if end is not None:
            return end, cmd[0]
    if env.get("SLURM_JOB_END_TIME", "").strip().isdigit():
        return float(env["SLURM_JOB_END_TIME"]), "SLURM_JOB_END_TIME"
    return None, ""


def resolve(trainer, env: dict | None = None, ask: bool = True) -> tuple[float, str]:
    """(budget seconds, how the log names it) for trainer.max_time; (0, '') when off. `slurm`:
    the time left in this Slurm job less trainer.max_time_margin; ConfigError outside a job.
    ask=False (ranks other than 0, which only follow rank 0's decisions) does not query Slurm."""
    if trainer.max_time != "slurm":          # the schema parsed it: seconds, or "slurm"
        seconds = float(trainer.max_time)
        return seconds, (describe(seconds) if seconds else "")
    env = dict(os.environ if env is None else env)
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job:
        raise ConfigError("config key 'trainer.max_time': slurm needs a Slurm job (no SLURM_JOB_ID here); "
                          "outside Slurm give a duration such as trainer.max_time=45m")
    if not ask:
        return 1.0, "slurm"
    end, source = slurm_end_time(job, env)
    if end is None:
        raise ConfigError(f"config key 'trainer.max_time': Slurm job {job} reports no end time (squeue/scontrol "
                          f"not found, or a job without a time limit); give a duration such as trainer.max_time=45m")
    margin = float(trainer.max_time_margin)
    left = end - time.time()
    if left - margin <= 0:
        raise ConfigError(f"config key 'trainer.max_time': Slurm job {job} has {describe(max(0.0, left))} left, "
                          f"no more than trainer.max_time_margin={trainer.max_time_margin}; lower the margin or "
                          f"give a duration")
    return left - margin, (f"slurm ({describe(left)} left in job {job} by {source}, less the "
                           f"{describe(margin)} margin)")


# --------------------------------------------------------------------------- the estimator
def typical_step_time(intervals: list[tuple[int, float]]) -> float:
    """The step-weighted median of the step times measured between host syncs (steps, seconds).

    A median, not a mean over the last few steps: a transient slow-down inside the measuring window
    (another process starting on a shared CPU, a cold file cache) must not set the whole run's
    length. On this 2-core CPU a 20-minute CIFAR-10 run whose last window held one such dip
    (62 img/s against ~72 before and after) chose 595 steps from the window's mean and ended
    2m18s early (-11.5%)."""
    times = sorted((seconds / steps, steps) for steps, seconds in intervals)
    half, seen = sum(steps for _, steps in times) / 2, 0
    for step_time, steps in times:
        seen += steps
        if seen >= half:
            return max(1e-9, step_time)
    return 1e-9


class Budget:
    """A run's time budget. Every rank holds one (with seconds = 0: no budget, and nothing to do);
    rank 0 measures, decides (`at_sync`) and sends its decision in the next host sync (`message`);
    every rank applies what it receives at that same step.

    seconds: the first start's budget; used: seconds of it spent before this process (resumed
    while estimating); started: `clock()` when this process's train() began; upper: U, the
    largest total allowed; estimating: the total is not final yet.
    """

    def __init__(self, seconds: float = 0.0, label: str = "", *, started: float = 0.0, used: float = 0.0,
                 upper: int = 0, estimating: bool = False, first_step: int = 0, is_main: bool = True,
                 steps_per_epoch: int = 1, checkpoint_interval: int = 1, knn_every: int = 0, knn_images: int = 0,
                 batch_size: int = 1, global_batch: int = 1, epoch_checkpoints: bool = True):
        self.seconds, self.label, self.started, self.used = seconds, label, started, used
        self.upper, self.estimating, self.is_main = upper, estimating and seconds > 0, is_main
        self.first_step = first_step
        self.spe, self.ckpt_every, self.knn_every = steps_per_epoch, checkpoint_interval, knn_every
        self.knn_images, self.batch_size, self.global_batch = knn_images, batch_size, global_batch
        self.epoch_checkpoints = epoch_checkpoints
        self.deadline = started + seconds - used
        self.checks_done, self.last_check = 0, None           # (step, clock, extra seconds) of the last sync
        self.intervals: list[tuple[int, float]] = []           # (steps, seconds) between host syncs, measured
        self.baseline = None                                   # the same at the start of measuring
        self.extras: dict[str, list[float]] = {"checkpoint": [0, 0.0], "knn": [0, 0.0]}   # count, seconds
        self.pending: tuple[int, bool] | None = None           # rank 0's decision for the next sync
        self.step_time = 0.0                                   # rank 0's latest measurement

    @property
    def active(self) -> bool:
        return self.seconds > 0

    @property
    def extra_seconds(self) -> float:
        return sum(s for _, s in self.extras.values())

    # ------------------------------------------------------------------ what the loop calls
    def sync_due(self, step: int) -> bool:
        """While estimating, a host sync at every power of two (the same steps on every rank)."""
        return self.estimating and step >= MEASURE_FROM and step & (step - 1) == 0

    def message(self) -> list[float]:
        """What this rank adds to the host sync's all-reduce: rank 0's pending total (in two parts,
        each exact in float32 after the mean over ranks) and a flag (1 estimate, 2 final); zeros on
        the other ranks and when nothing is pending, so the sum over ranks is rank 0's decision."""
        if not self.active:
            return []
        if not (self.is_main and self.pending):
            return [0.0, 0.0, 0.0]
        total, final = self.pending
        return [float(total // 4096), float(total % 4096), 2.0 if final else 1.0]

    def at_sync(self, step: int, received: list[float], schedule):
        """At a host sync (every rank, same step): apply the decision received (`message` summed
        over ranks), then on rank 0 measure and maybe decide. Returns (schedule, final_now)."""
        final_now = False
        if self.active and received and received[2] > 0:
            total = max(step, min(self.upper, int(round(received[0])) * 4096 + int(round(received[1]))))
            final_now = round(received[2]) == 2
            schedule = schedule.rebased(step, total)
            self.estimating = self.estimating and not final_now
            self.pending = None
            if self.is_main:
                self.log_decision(step, total, final_now)
                if final_now and schedule.warmup >= total:
                    log.warning("time budget %s: the warmup (%d steps) does not end within the %d steps chosen; "
                                "lower optimizer.warmup_epochs", self.label, schedule.warmup, total)
        if self.active and self.is_main:
            self.check(step, schedule.total)
        return schedule, final_now

    @contextmanager
    def timing(self, kind: str):
        """Time a checkpoint or kNN pass: it counts against the budget but not as step time."""
        if not self.active:
            yield
            return
        t0 = clock()
        try:
            yield
        finally:
            self.extras[kind][0] += 1
            self.extras[kind][1] += clock() - t0

    def state(self, schedule) -> dict | None:
        """The checkpoint's "budget" entry (None without a budget)."""
        if not self.active:
            return None
        return {"label": self.label, "seconds": self.seconds, "used_s": self.used + clock() - self.started,
                "estimating": self.estimating, "schedule": schedule.state()}

    # ------------------------------------------------------------------ rank 0: measure and decide
    def check(self, step: int, total: int) -> None:
        """Rank 0 at a host sync: measure; while estimating, decide at the CHECKS."""
        now = clock()
        if self.last_check is None:
            if step >= self.first_step + MEASURE_FROM:
                self.last_check = self.baseline = (step, now, self.extra_seconds)
            return
        if not self.estimating:                         # the rate for the progress bar's expected end
            since, t0, extra0 = self.baseline
            self.step_time = max(1e-9, (now - t0 - (self.extra_seconds - extra0)) / max(1, step - since))
            return
        since, t0, extra0 = self.last_check
        if step > since:                                # one interval between host syncs
            self.intervals.append((step - since, now - t0 - (self.extra_seconds - extra0)))
        self.last_check = (step, now, self.extra_seconds)
        if sum(n for n, _ in self.intervals) < MIN_STEPS:
            return
        spent = (self.used + now - self.started) / self.seconds
        due = [i for i, f in enumerate(CHECKS) if i >= self.checks_done and spent >= f]
        if not due:
            return
        first, final = self.checks_done == 0, due[-1] == len(CHECKS) - 1
        self.checks_done = due[-1] + 1
        self.step_time = typical_step_time(self.intervals)
        chosen = self.solve(step, now)
        current = self.pending[0] if self.pending else total
        if first or final or abs(chosen - current) > TOLERANCE * current:
            self.pending = (chosen, final)

    def solve(self, step: int, now: float) -> int:
        """The largest total <= U whose remaining steps and extras fit in the time left."""
        left = self.deadline - now
        lo, hi = step, min(self.upper, step + max(0, int(left / self.step_time)) + 1)
        while lo < hi:                                  # the cost is monotone in the total
            mid = (lo + hi + 1) // 2
            if (mid - step) * self.step_time + self.extras_until(step, mid) <= left:
                lo = mid
            else:
                hi = mid - 1
        return max(lo, 1)

    def extras_until(self, step: int, total: int) -> float:
        """Expected seconds of the checkpoints and kNN passes after `step` in a run ending at `total`
        (as loop.py makes them: every checkpoint_interval, each epoch end unless epoch_checkpoints is
        false, the end; the export)."""
        epochs = (total // self.spe - step // self.spe) if self.epoch_checkpoints else 0
        saves = total // self.ckpt_every - step // self.ckpt_every + epochs + (total % self.spe != 0) + 1
        knn = 0
        if self.knn_every > 0 and self.knn_images:
            done = -(-total // self.spe)                       # the last epoch, counted as at the end
            knn = done // self.knn_every - (step // self.spe) // self.knn_every + (done % self.knn_every != 0)
        return saves * self.mean_cost("checkpoint") + knn * self.mean_cost("knn")

    def mean_cost(self, kind: str) -> float:
        n, seconds = self.extras[kind]
        if n:
            return seconds / n
        if kind == "knn":
            return self.knn_images * KNN_IMAGE_COST * self.step_time / self.batch_size
        return 0.0

    def expected_end(self, step: int, total: int) -> float:
        """UNIX time at which a run of `total` steps should end, at the measured rate (rank 0)."""
        remaining = (total - step) * self.step_time + self.extras_until(step, total)
        return time.time() + remaining

    # ------------------------------------------------------------------ what people read
    def log_decision(self, step: int, total: int, final: bool) -> None:
        rate = self.global_batch / self.step_time if self.step_time else float("nan")
        end = datetime.fromtimestamp(self.expected_end(step, total)).strftime("%H:%M:%S")
        bound = " (the upper bound: raise trainer.max_epochs or max_steps for more)" if total >= self.upper else ""
        if final:
            log.info("time budget %s (from the first start; --resume keeps its %d steps): %d steps chosen at "
                     "%.1f img/s, expected end %s%s", self.label, total, total, rate, end, bound)
        else:
            log.info("time budget %s: estimate %d steps at %.1f img/s, expected end %s (checked again at %s "
                     "of the budget)%s", self.label, total, rate, end,
                     " and ".join(f"{f:.0%}" for f in CHECKS[self.checks_done:]) or "the next sync", bound)

    def log_start(self, step: int, total: int, resumed: bool) -> None:
        if resumed and not self.estimating:
            log.info("time budget %s (from the first start; --resume keeps its %d steps): continuing at step "
                     "%d of %d", self.label, total, step, total)
        else:
            end = datetime.fromtimestamp(time.time() + self.deadline - clock()).strftime("%H:%M:%S")
            log.info("time budget %s%s: ends by %s; the first steps train while they measure the step time "
                     "(schedules over the upper bound of %d steps until the estimate at %.0f%% of the budget)",
                     self.label, " (left of the first start)" if resumed else "", end, total, CHECKS[0] * 100)

    def postfix(self, step: int, total: int) -> dict:
        """The progress bar's budget fields (rank 0): the budget, the total ('?' while estimating)
        and the expected end."""
        if not self.active:
            return {}
        fields = {"budget": describe(self.seconds), "steps": f"{total}{'' if not self.estimating else '?'}"}
        if self.step_time:
            fields["end"] = datetime.fromtimestamp(self.expected_end(step, total)).strftime("%H:%M:%S")
        return fields
