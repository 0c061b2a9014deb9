"""The built wheel, installed into a fresh venv outside the checkout: the `byol` command, its
subcommands and the packaged configs work with no repository in sight.

Dependencies are borrowed from the test environment (a .pth file) instead of reinstalled: the
point is what the wheel itself holds (modules, configs, entry points), not pip's resolver.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"       # a copy, so setuptools' build/ folder never lands in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info",
                                                                 "__pycache__", ".pytest_cache"))
    # --no-build-isolation: built by this environment's setuptools (>= 64, as pyproject.toml asks) instead
    # of a fresh one pip installs into a temporary environment first (4.2 s -> 0.7 s); the same files
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(work / "dist"), str(source)], check=True, capture_output=True, cwd=work)
    (wheel,) = (work / "dist").glob("byol-*.whl")
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the test environment's packages, minus its editable byol (whose finder would shadow the wheel)
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, cwd=work)
    return wheel, env_dir, work


def run(env_dir: Path, *args, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(env_dir / "bin" / "byol"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_wheel_holds_the_package_its_configs_and_the_console_script(installed):
    wheel, env_dir, work = installed
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("byol/__init__.py", "byol/py.typed", "byol/configs/config.yaml", "byol/configs/demo.yaml",
                   "byol/store/reader.py", "byol/eval_command.py", "byol/pretrain/train_command.py"):
        assert needed in names, needed
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "byol = byol.subcommands:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    located = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import byol; print(byol.__file__)"],
                             capture_output=True, text=True, cwd=work, check=True).stdout
    assert str(env_dir) in located and str(ROOT) not in located     # the wheel's copy, not the checkout's
    out = run(env_dir, "--help", cwd=work)
    assert out.returncode == 0 and all(f"  {c} " in out.stdout for c in
                                       ("train", "extract", "eval", "baselines", "latent", "export", "pipeline", "report"))
    assert run(env_dir, "nope", cwd=work).returncode == 2


@pytest.mark.long
def test_demo_pipeline_runs_from_the_wheel_outside_the_checkout(installed):
    _, env_dir, work = installed
    # Tiny, as the subject is the installed wheel, not the demo's results: the standard stem (the
    # demo's small one sees 16x the pixels per layer) and 360 digits a split, which is all of the test
    # split (the 360 rows `latent` counts below) and a quarter of train: the pipeline runs 5x faster.
    tiny = ["data_transforms.input_shape=(16,16,3)", "network.small_stem=false", "data.max_images=360",
            "network.projection_head.mlp_hidden_size=32", "network.projection_head.projection_size=16",
            "trainer.max_steps=2", "trainer.knn_every=0", "trainer.progress=false", "trainer.tensorboard=false",
            "trainer.run_dir=runs/demo"]
    out = run(env_dir, "pipeline", "--config", "configs/demo.yaml", "--head-epochs", "1", *tiny, cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(summary["top1"]) >= {"linear", "mlp", "knn"} and (work / "runs" / "demo" / "report.md").is_file()
    # each stage as its own subcommand, on the files the pipeline wrote
    feats = work / "runs" / "demo" / "features"
    ev = run(env_dir, "eval", "--train", feats / "train", "--test", feats / "test", "--head", "linear",
             "--epochs", "1", "--overwrite", cwd=work)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert 0 <= json.loads(ev.stdout.strip().splitlines()[-1])["top1"] <= 100
    lat = run(env_dir, "latent", "--checkpoint", work / "runs" / "demo" / "encoder.pt", "--input", "split:test",
              "--out", work / "test.npy", "--format", "npy", cwd=work)
    assert lat.returncode == 0, lat.stderr[-2000:]
    assert json.loads(lat.stdout.strip().splitlines()[-1])["n_written"] == 360   # the digits' test split
