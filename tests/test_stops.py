"""Stop signals to a whole process group, as Slurm, `timeout`, systemd, `docker stop` and Ctrl-C
send them: every process of the command gets the signal, DataLoader workers included.

Each test starts the real command in its own session (`start_new_session=True`; a warm fork,
tests/warm_process.py, but for torchrun, whose workers it starts itself), signals the
whole group with `os.killpg` once work is under way, and checks: the command ends by itself with
a one-line message and exit status 128 + signal, no process of the group is left, nothing
half-written remains; then a rerun (`--resume` for training) ends exactly where an uninterrupted
run ends: every checkpoint tensor equal, every shard's SHA-256 equal. Plus: under torchrun a
signal to ONE rank stops every rank at the same step. Tiny settings, CPU, seconds each.
"""
import json
import os
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from byol.base.atomic import file_sha256
from byol.config import load_config
from byol.extract.extract_command import extract
from byol.extract.latent_command import generate
from byol.pretrain.checkpoint import resume_config
from byol.pretrain.loop import train

import warm_process
from testkit import REPO, TINY, free_port

# warm forks run at this process's thread count (their torch loaded with its environment): the
# in-process references match them bit for bit
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
STOPS = [signal.SIGTERM, signal.SIGINT]
# 48 images / batch 8 = 6 steps per epoch, 2 epochs: the loader's workers restart each epoch
TRAIN_ARGS = [a for a in TINY if not a.startswith(("trainer.batch_size", "trainer.num_workers", "trainer.log_every"))]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stop-images")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(24):
            Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(root / cls / f"{i:02d}.png")
    return root


def training_args(images: Path, run: Path) -> list[str]:
    return [*TRAIN_ARGS, "data.name=folder", f"data.root={images}", "data.split=train", "data.max_images=0",
            "trainer.batch_size=8", "trainer.num_workers=2", "trainer.log_every=3", "trainer.max_steps=12",
            "trainer.checkpoint_interval=100", "trainer.seed=5", f"trainer.run_dir={run}"]


@pytest.fixture
def start():
    """start(cmd, stderr file) -> the command in a session of its own; whatever is left of it is
    SIGKILLed at teardown, so a failing test leaves no processes behind."""
    started = []

    def launch(args: list, err: Path) -> warm_process.WarmProcess:
        """`python ARGS...` in a warm fork, stderr to the file `err` (not a pipe: nothing blocks on it)."""
        started.append(warm_process.start(args, cwd=REPO, env=ENV, stdout=os.devnull, stderr=err, new_session=True))
        return started[-1]
    yield launch
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def wait_for(ready, proc: warm_process.WarmProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before the signal (rc {proc.returncode})"
        assert time.monotonic() < deadline, "timed out waiting for work to start"
        time.sleep(0.01)


def group_gone(pgid: int, timeout: float = 3.0) -> bool:
    """True once no process of the group is left (the loader's workers went with the command)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def stopped(proc: warm_process.WarmProcess, sig: int, err: Path) -> str:
    """Wait for the signalled command; check its exit status and its one-line report."""
    rc = proc.wait(timeout=120)
    text = err.read_text()
    assert rc == 128 + sig, (rc, text[-3000:])
    assert "Traceback" not in text and "killed by signal" not in text, text[-3000:]
    assert group_gone(proc.pid), "processes of the stopped command are still running"
    return text


def differences(a, b, where: str = "") -> list[str]:
    """Where two nested checkpoint entries differ (tensors compared exactly: dtype, shape, values)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        return [f"{where} keys"] if set(a) != set(b) else \
            [d for k in a for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def checkpoint(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    return {k: ckpt[k] for k in ("step", "online", "target", "optimizer")}


# --------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def reference_training(tmp_path_factory, images) -> dict:
    run = tmp_path_factory.mktemp("stop-reference") / "run"
    train(load_config(REPO / "config.yaml", training_args(images, run)))   # as main.py reads it
    return checkpoint(run)


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_training_stopped_by_a_group_signal_resumes_to_equal_weights(start, tmp_path, images, reference_training, sig):
    run = tmp_path / "run"
    proc = start(["main.py", *training_args(images, run)], tmp_path / "err.txt")
    metrics = run / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count('"loss"') >= 1, proc)   # step 3 logged
    os.killpg(proc.pid, sig)
    text = stopped(proc, sig, tmp_path / "err.txt")
    step = checkpoint(run)["step"]
    assert f"interrupted at step {step} ({sig.name}); checkpoint written to {run / 'checkpoints' / 'last.pt'}" in text
    assert f"--resume {run}" in text
    assert 3 <= step < 12 and step % 3 == 0              # stops at a sync step (every log_every = 3)
    assert not list((run / "checkpoints").glob(".*tmp*"))

    assert train(resume_config(run), resume=run)["steps"] == 12       # main.py --resume RUN_DIR
    assert not differences(checkpoint(run), reference_training), differences(checkpoint(run), reference_training)


@pytest.mark.long
def test_a_signal_to_one_torchrun_rank_stops_every_rank_at_the_same_step_and_both_resume(start, tmp_path):
    run = tmp_path / "ddp"
    cmd = ["-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "main.py", *TINY, f"trainer.run_dir={run}", "trainer.batch_size=8", "trainer.max_steps=600",
           "trainer.log_every=2", "trainer.checkpoint_interval=1000", "trainer.device=cpu"]
    proc = start(cmd, tmp_path / "err.txt")        # the launcher a warm fork, its workers cold processes
    metrics = run / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count('"loss"') >= 1, proc)
    rank1 = [pid for pid in children(proc.pid) if environ(pid).get("RANK") == "1"]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGUSR1)             # rank 1 only: rank 0 learns it at the next sync
    proc.wait(timeout=120)
    text = (tmp_path / "err.txt").read_text()
    step = checkpoint(run)["step"]
    expected = (f"interrupted at step {step} (SIGUSR1); checkpoint written to {run / 'checkpoints' / 'last.pt'}. "
                f"Continue with: python main.py --resume {run}")
    # both ranks, the same step and signal (counted, not split by line: the two ranks share stderr,
    # and under load one rank's line can land before the other's newline)
    assert text.count("interrupted at step") == 2 and text.count(expected) == 2, text[-3000:]
    assert 2 <= step < 600 and step % 2 == 0
    assert "exitcode  : 138" in text                  # torchrun's failure summary names the stopped rank's status
    assert group_gone(proc.pid)

    # both ranks resume from that checkpoint and stay in step (`torchrun ... main.py --resume RUN_DIR`)
    resumed = warm_process.run(["-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
                                "main.py", "--resume", run, f"trainer.max_steps={step + 2}"], cwd=REPO, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = resumed.last_json
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] and summary["steps"] == step + 2


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def environ(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


# --------------------------------------------------------------------------- extraction

SLOW_SINK = """
import runpy, sys, time
import byol.store.sink as sink
real_put = sink.ShardSink.put
def slow_put(self, *args, **kwargs):     # 40 ms a batch: the signal lands mid-extraction
    time.sleep(0.04)
    return real_put(self, *args, **kwargs)
sink.ShardSink.put = slow_put
sys.argv = ["byol.extract.extract_command"] + sys.argv[1:]
runpy.run_module("byol.extract.extract_command", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def encoder(trained_run) -> Path:
    return trained_run / "encoder.pt"      # the session's 1-step run (TINY): read only


def extract_args(encoder: Path, images: Path, out: Path) -> list[str]:
    return [str(encoder), "--split", "train", "--out", str(out), "--rows-per-shard", "4", "--batch-size", "2",
            "--num-workers", "2", "--no-progress", "data.name=folder", f"data.root={images}"]


def extract_in_process(encoder: Path, images: Path, out: Path) -> dict:
    """What `python -m byol.extract *extract_args(...)` runs."""
    return extract(encoder, "train", out, ["data.name=folder", f"data.root={images}"], rows_per_shard=4,
                   batch_size=2, num_workers=2, progress=False)


def digests(split_dir: Path) -> dict:
    return {p.name: file_sha256(p) for p in sorted(split_dir.glob("shard-*.h5"))}


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory, encoder, images) -> dict:
    out = tmp_path_factory.mktemp("stop-reference-store")
    extract_in_process(encoder, images, out)
    return digests(out / "train")


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_extraction_stopped_by_a_group_signal_keeps_finished_shards_and_completes(start, tmp_path, encoder, images,
                                                                                   reference_store, sig):
    split = tmp_path / "train"
    proc = start(["-c", SLOW_SINK, *extract_args(encoder, images, tmp_path)], tmp_path / "err.txt")
    wait_for(lambda: len(list(split.glob("shard-*.h5"))) >= 2, proc)
    os.killpg(proc.pid, sig)
    text = stopped(proc, sig, tmp_path / "err.txt")
    kept = digests(split)
    assert f"interrupted ({sig.name}): {len(kept)} of 12 shards of {split} are finished and kept" in text
    assert 2 <= len(kept) < 12 and kept == {name: reference_store[name] for name in kept}
    assert not list(split.glob(".*tmp*")) and not (split / "manifest.json").exists()

    assert extract_in_process(encoder, images, tmp_path)["reused_shards"] == len(kept)   # the same command again
    assert digests(split) == reference_store and (split / "manifest.json").is_file()


def test_latent_store_stopped_by_a_group_signal_resumes_to_the_uninterrupted_store(start, tmp_path, encoder,
                                                                                      images):
    out, bad = tmp_path / "latents", tmp_path / "empty.png"
    bad.write_bytes(b"")                               # input 0: skipped, before the point the rerun resumes at
    slow = SLOW_SINK.replace('"byol.extract.extract_command"] +', '"generate_latent_out.py"] +').replace(
        'runpy.run_module("byol.extract.extract_command", run_name="__main__", alter_sys=True)',
        'runpy.run_path("latent_eval/generate_latent_out.py", run_name="__main__")')
    args = ["--checkpoint", str(encoder), "--input", str(bad), str(images), "--out", str(out), "--batch-size", "2",
            "--rows-per-shard", "4", "--num-workers", "2", "--no-progress"]
    proc = start(["-c", slow, *args], tmp_path / "err.txt")
    wait_for(lambda: len(list(out.glob("shard-*.h5"))) >= 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    text = stopped(proc, signal.SIGTERM, tmp_path / "err.txt")
    kept = sorted(out.glob("shard-*.h5"))
    assert f"finished shards are kept in {out}" in text and "run the same command again" in text
    assert 2 <= len(kept) < 12 and not list(out.glob(".*tmp*")) and not (out / "manifest.json").exists()
    for shard in kept:                                 # whole shards: 4 rows each, readable
        with h5py.File(shard, "r") as f:
            assert f["embeddings"].shape == (4, 512)
    untouched = {p.name: os.stat(p).st_ino for p in kept}

    settings = dict(batch_size=2, num_workers=2, rows_per_shard=4, progress=False)
    reference = generate(encoder, [str(bad), str(images)], tmp_path / "reference", **settings)
    summary = generate(encoder, [str(bad), str(images)], out, **settings)    # the same command: no --overwrite
    assert {p: os.stat(out / p).st_ino for p in untouched} == untouched        # kept, not written again
    assert digests(out) == digests(tmp_path / "reference") and len(digests(out)) == 12
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (out, tmp_path / "reference")]
    assert manifests[0]["shards"] == manifests[1]["shards"] and manifests[0]["settings"] == manifests[1]["settings"]
    assert (out / "skipped.json").read_text() == (tmp_path / "reference" / "skipped.json").read_text()
    ignore = ("out", "outputs", "skipped_report")
    assert {k: v for k, v in summary.items() if k not in ignore} == {k: v for k, v in reference.items()
                                                                     if k not in ignore}
    assert (summary["n_inputs"], summary["n_written"], summary["n_skipped"]) == (49, 48, 1)