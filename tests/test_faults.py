"""Fault injection: SIGKILL at random moments of training and extraction, a disk that fills up,
and two extractions racing for one store. Nothing may be lost and no result may differ.

Kill trials run the real commands (`python main.py`, `python -m byol.extract`) as processes of their
own (warm forks, tests/warm_process.py: torch and the like already imported) and kill them with
SIGKILL (no handler runs, as with the OOM killer or a lost node) at moments drawn from a seeded RNG: right after a given step or shard lands (often inside the checkpoint or shard
write that follows), or at a random time after start-up. Each trial then reruns the command
(`--resume` for training) until it finishes, and compares the result with an uninterrupted run:
every tensor of the final checkpoint equal, every shard's SHA-256 equal.

    python -m pytest tests/test_faults.py                  # the sample that .ci/run runs
    python -m pytest tests/test_faults.py -m slow          # the full set of trials
"""
import errno
import hashlib
import os
import random
import signal
import time
from pathlib import Path

import h5py
import pytest
import torch

import byol.base.atomic as atomic_module
import byol.pretrain.checkpoint as ckpt_module
from byol.base.atomic import file_sha256
from byol.base.errors import StoreError, WriteError
from byol.base.file_lock import exclusive_writer
from byol.config import load_config
from byol.evaluate.head_file import head_record, save_head
from byol.evaluate.heads import build_head
from byol.extract.extract_command import extract
from byol.pretrain.checkpoint import resume_config
from byol.pretrain.loop import train
from byol.store import FeatureStore

import warm_process
from testkit import REPO, TINY

TRAIN_ARGS = TINY + ["trainer.max_steps=10", "trainer.checkpoint_interval=1", "trainer.seed=3"]
# CI runs one trial of each kind (seeded: the same kill moments every run; a trial costs 10-20 s);
# `-m slow` runs the other 13, which is where the coverage is.
FAST_TRIALS, SLOW_TRIALS = 1, 13
# warm forks run at this process's thread count (their torch loaded with its environment): the
# in-process references match them bit for bit
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------- helpers

def tensors_equal(a, b, where="") -> list[str]:
    """Paths of the entries where two nested checkpoint dicts differ (tensors compared exactly)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} keys"]
        return [d for k in a for d in tensors_equal(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return [f"{where} length"] if len(a) != len(b) else \
            [d for i, (x, y) in enumerate(zip(a, b)) for d in tensors_equal(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def final_state(run_dir: Path) -> dict:
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    encoder = torch.load(run_dir / "encoder.pt", weights_only=True)
    return {"step": ckpt["step"], "online": ckpt["online"], "target": ckpt["target"],
            "optimizer": ckpt["optimizer"], "encoder": encoder}


def logged_steps(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_text().count('"loss"')
    except OSError:
        return 0


def start_training(run_dir: Path) -> warm_process.WarmProcess:
    """`python main.py --resume RUN_DIR` once the run has written its config; a fresh start before that."""
    if (run_dir / "config.yaml").exists():
        cmd = ["main.py", "--resume", run_dir]
    else:
        cmd = ["main.py", *TRAIN_ARGS, f"trainer.run_dir={run_dir}"]
    return warm_process.start(cmd, cwd=REPO, env=ENV, stdout=os.devnull)


def kill_when(proc: warm_process.WarmProcess, ready, rng: random.Random, timeout: float = 180) -> bool:
    """SIGKILL `proc` a random 0-40 ms after `ready()` turns true; False if it finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.04))
    if proc.poll() is not None:
        return False
    proc.kill()
    proc.wait()
    return True


def finish(proc: warm_process.WarmProcess) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> dict:
    """The uninterrupted run: what the trials' command runs, in this process (no process is under test here)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(load_config(REPO / "config.yaml", [*TRAIN_ARGS, f"trainer.run_dir={run}"]))    # as main.py reads it
    return final_state(run)


# --------------------------------------------------------------------------- training kills

def training_trial(run: Path, seed: int) -> int:
    """Kill a training run twice at random moments, resume until done; returns the kills that landed."""
    rng, kills = random.Random(seed), 0
    for attempt in range(2):
        proc = start_training(run)
        if rng.random() < 0.25:     # anywhere, start-up included (byol's imports, dataset, config write)
            t0 = time.monotonic()
            delay = rng.uniform(0.5, 3.0)
            kills += kill_when(proc, lambda: time.monotonic() - t0 > delay, rng)
        else:                       # just after step N is logged: the checkpoint write follows
            target = rng.randint(1, 9)
            kills += kill_when(proc, lambda: logged_steps(run) >= target, rng)
        if (run / "checkpoints" / "last.pt").exists():     # whatever moment it died, last.pt is whole
            torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    finish(start_training(run))
    return kills


def check_trial(run: Path, reference: dict, kills: int = 1) -> None:
    assert kills >= 1, "no kill landed: the run finished first"
    assert not tensors_equal(final_state(run), reference), tensors_equal(final_state(run), reference)
    assert not list((run / "checkpoints").glob(".*.tmp-*"))
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == list(range(1, 11))      # every step logged exactly once, despite the kills


@pytest.mark.parametrize("seed", range(FAST_TRIALS))
def test_training_killed_at_random_moments_resumes_to_identical_weights(tmp_path, reference_run, seed):
    kills = training_trial(tmp_path / "run", seed)
    print(f"training kill trial {seed}: {kills} SIGKILLs landed")   # shown with pytest -s
    check_trial(tmp_path / "run", reference_run, kills)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(FAST_TRIALS, FAST_TRIALS + SLOW_TRIALS))
def test_training_kill_trials_full_set(tmp_path, reference_run, seed):
    kills = training_trial(tmp_path / "run", seed)
    print(f"training kill trial {seed}: {kills} SIGKILLs landed")   # shown with pytest -s
    check_trial(tmp_path / "run", reference_run, kills)


DIE_IN_CHECKPOINT_WRITE = """
import io, os, runpy, signal, sys, torch
real_save, calls = torch.save, [0]
def dying_save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] < {n}:
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])   # half the checkpoint reaches the disk
    f.flush(); os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
sys.argv = ["main.py"] + sys.argv[1:]
runpy.run_path("main.py", run_name="__main__")
"""


def test_killed_inside_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, reference_run):
    run = tmp_path / "run"
    # torch.save calls: encoder-start.pt and encoder-start-bn.pt at step 0, then the checkpoints of steps 1,
    # 2, 3; the 6th (step 4's checkpoint) dies
    proc = warm_process.run(["-c", DIE_IN_CHECKPOINT_WRITE.format(n=6), *TRAIN_ARGS, f"trainer.run_dir={run}"],
                            cwd=REPO, env=ENV)
    assert proc.returncode == -signal.SIGKILL
    half_written = list((run / "checkpoints").glob(".last.pt.tmp-*"))
    assert len(half_written) == 1 and half_written[0].stat().st_size > 0
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 3   # the previous one
    finish(start_training(run))
    check_trial(run, reference_run)


def test_resume_removes_what_a_killed_encoder_export_left(trained_run_copy):
    """A kill inside the encoder export leaves hidden temp files beside encoder.pt; --resume removes
    them (as it does a checkpoint's), so a run folder does not keep 45 MB per kill."""
    run = trained_run_copy
    # another process's temp names (pid 1): this run's own export would simply write over its own
    left = [run / f".{name}{atomic_module.TEMP_MARK}1" for name in ("encoder.pt", "encoder.safetensors")]
    for path in left:
        path.write_bytes(b"half an export")
    train(resume_config(run, ["trainer.max_steps=2"]), resume=run)
    assert not any(path.exists() for path in left) and not list(run.glob(".*.tmp-*"))


# --------------------------------------------------------------------------- extraction kills

@pytest.fixture(scope="module")
def encoder_path(trained_run) -> Path:
    """The encoder of the shared tiny trained run (1 step, tests/conftest.py). Read only."""
    return trained_run / "encoder.pt"


def extract_command(encoder: Path, out: Path) -> list[str]:
    return ["-m", "byol.extract", str(encoder), "--split", "train", "--out", str(out),
            "--rows-per-shard", "48", "--batch-size", "8", "--num-workers", "0", "--no-progress",
            "data.max_images=480"]


def extract_in_process(encoder: Path, out: Path) -> dict:
    """What `extract_command(encoder, out)` runs, in this process."""
    return extract(encoder, "train", out, ["data.max_images=480"], rows_per_shard=48, batch_size=8,
                   num_workers=0, progress=False)


def store_digest(split_dir: Path) -> dict:
    FeatureStore.open(split_dir, verify=True)
    return {p.name: file_sha256(p) for p in sorted(split_dir.glob("shard-*.h5"))}


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory, encoder_path) -> dict:
    out = tmp_path_factory.mktemp("reference-store")
    extract_in_process(encoder_path, out)
    return store_digest(out / "train")


def extraction_trial(encoder: Path, out: Path, seed: int) -> int:
    rng, kills = random.Random(seed), 0
    for _ in range(2):
        proc = warm_process.start(extract_command(encoder, out), cwd=REPO, env=ENV, stdout=os.devnull)
        target = rng.randint(0, 9)        # finished shards before the kill (0: during set-up / shard 0)
        kills += kill_when(proc, lambda: len(list(out.glob("train/shard-*.h5"))) >= target, rng)
    finish(warm_process.start(extract_command(encoder, out), cwd=REPO, env=ENV, stdout=os.devnull))
    return kills


@pytest.mark.parametrize("seed", range(FAST_TRIALS))
def test_extraction_killed_at_random_moments_completes_byte_identical(tmp_path, encoder_path,
                                                                      reference_store, seed):
    kills = extraction_trial(encoder_path, tmp_path, seed)
    print(f"extraction kill trial {seed}: {kills} SIGKILLs landed")   # shown with pytest -s
    assert kills >= 1 and store_digest(tmp_path / "train") == reference_store
    assert not list((tmp_path / "train").glob(".shard-*.tmp-*"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(FAST_TRIALS, FAST_TRIALS + SLOW_TRIALS))
def test_extraction_kill_trials_full_set(tmp_path, encoder_path, reference_store, seed):
    kills = extraction_trial(encoder_path, tmp_path, seed)
    print(f"extraction kill trial {seed}: {kills} SIGKILLs landed")   # shown with pytest -s
    assert kills >= 1 and store_digest(tmp_path / "train") == reference_store


# --------------------------------------------------------------------------- a full disk

def no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_write_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    train(load_config(None, TINY + [f"trainer.run_dir={tmp_path / 'run'}", "trainer.max_steps=2",
                                    "trainer.checkpoint_interval=1"]))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    before = sha(last)

    def save_until_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")       # some bytes reach the temp file, then the disk is full
        no_space()
    monkeypatch.setattr(ckpt_module.torch, "save", save_until_full)
    with pytest.raises(WriteError, match=r"could not write '.*last\.pt': No space left on device.*"
                                         r"previous file is unchanged"):
        train(resume_config(tmp_path / "run", ["trainer.max_steps=4"]), resume=tmp_path / "run")
    assert sha(last) == before and not list(last.parent.glob(".*tmp*"))
    monkeypatch.undo()
    assert train(resume_config(tmp_path / "run", ["trainer.max_steps=4"]), resume=tmp_path / "run")["steps"] == 4


def temp_files_on_a_full_disk(monkeypatch, suffix: str) -> None:
    """Files ending in `suffix` are written to /dev/full: every write fails with a real ENOSPC."""
    real_temp_path = atomic_module.temp_path

    def temp_path(path):
        tmp = real_temp_path(path)
        if Path(path).suffix == suffix:
            tmp.symlink_to("/dev/full")
        return tmp
    monkeypatch.setattr(atomic_module, "temp_path", temp_path)


def test_safetensors_writes_on_a_full_disk_are_one_clear_error(tmp_path, monkeypatch):
    """safetensors' own writer reports a full disk as SafetensorError, not OSError; the encoder export
    and the head file must still fail with the WriteError that names the file and leave nothing."""
    temp_files_on_a_full_disk(monkeypatch, ".safetensors")
    run = tmp_path / "run"
    with pytest.raises(WriteError, match=r"could not write '.*encoder-start\.safetensors': No space left on device"):
        train(load_config(None, TINY + [f"trainer.run_dir={run}", "trainer.max_steps=1"]))
    assert not (run / "encoder-start.safetensors").exists() and not (run / "encoder-start.json").exists()
    head = build_head("mlp", 6, 3, hidden=(4,))
    with pytest.raises(WriteError, match=r"could not write '.*head\.safetensors': No space left on device"):
        save_head(tmp_path / "head.safetensors", head_record(head, "mlp", {}, {}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and not list(run.glob(".*tmp*"))


def test_file_size_limit_from_the_os_is_one_clear_line_and_keeps_the_checkpoint(trained_run_copy):
    """A real failed write (RLIMIT_FSIZE: the kernel refuses bytes past the limit, EFBIG), through torch.save."""
    run = trained_run_copy      # 1 step done, resumed here
    last = run / "checkpoints" / "last.pt"
    before = sha(last)
    # SIGXFSZ ignored: write() past the limit fails with EFBIG instead of killing the process
    proc = warm_process.run(["main.py", "--resume", run, "trainer.max_steps=2"], cwd=REPO, env=ENV,
                            file_size_limit=last.stat().st_size // 2)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"error: could not write '{last}': File too large" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sha(last) == before and not list(last.parent.glob(".*tmp*"))


def test_shard_write_on_a_full_disk_keeps_finished_shards(tmp_path, encoder_path, reference_store, monkeypatch):
    real_write = h5py.Dataset.__setitem__

    def write_until_full(self, key, value):      # the disk fills up while shard 3 is written
        if ".shard-00003.h5.tmp-" in self.file.filename:
            no_space()
        return real_write(self, key, value)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", write_until_full)
    with pytest.raises(WriteError, match=r"shard-00003\.h5': No space left on device"):
        extract_in_process(encoder_path, tmp_path)
    split = tmp_path / "train"
    kept = {p.name: file_sha256(p) for p in sorted(split.glob("shard-*.h5"))}
    assert kept == {k: v for k, v in reference_store.items() if k < "shard-00003.h5"}
    assert not list(split.glob(".shard-*")) and not (split / "manifest.json").exists()
    monkeypatch.undo()
    resumed = extract_in_process(encoder_path, tmp_path)
    assert resumed["reused_shards"] == 3 and store_digest(split) == reference_store


# --------------------------------------------------------------------------- two writers

def test_second_extraction_into_a_locked_store_refuses_with_the_holder(tmp_path, encoder_path, reference_store):
    with exclusive_writer(tmp_path / "train"):
        with pytest.raises(StoreError, match=rf"'{tmp_path / 'train'}' is being written by another extraction "
                                             rf"\(pid {os.getpid()} on .*\); wait for it"):
            extract_in_process(encoder_path, tmp_path)
    extract_in_process(encoder_path, tmp_path)    # the lock went with its holder
    assert store_digest(tmp_path / "train") == reference_store


def test_two_extractions_started_together_leave_one_valid_store(tmp_path, encoder_path, reference_store):
    procs = [warm_process.start(extract_command(encoder_path, tmp_path), cwd=REPO, env=ENV) for _ in range(2)]
    outcomes = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    for code, err in outcomes:          # each either finished, or refused in one clear line
        assert code == 0 or (code == 2 and "is being written by another extraction" in err
                             and "Traceback" not in err), err[-2000:]
    assert any(code == 0 for code, _ in outcomes)
    assert store_digest(tmp_path / "train") == reference_store
