"""One command-line path (byol/command_line.py): shared flags with one default, one override syntax, the
fresh-or-resume decision (training's command, byol/pretrain/train_command.py), and device errors named by
the flag or key that held the value.

Parsers are built and entry points called in-process (a Python start with torch costs seconds)."""
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch

from byol import command_line as cli
from byol.base.distributed import DeviceError, resolve_device
from byol.base.errors import ConfigError
from byol.config import load_config, to_dict
from byol.evaluate.options import Options, add_baseline_arguments, add_common_arguments, add_head_arguments
from byol.pretrain import train_command

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")


def parsers():
    """{command: (parser, the arguments it needs besides overrides)}."""
    from byol import pipeline
    from byol.extract import extract_command as extract, latent_command as latent
    return {"main": (train_command.build_parser(), ["--resume", "runs/byol"]),
            "pipeline": (pipeline.build_parser(), ["--head-epochs", "2"]),
            "extract": (extract.build_parser(), ["enc.pt", "--out", "features/"]),
            "latent": (latent.build_parser(), ["--checkpoint", "enc.pt", "--input", "a.jpg", "--out", "l"])}


def run_entry(capsys, command: str, argv: list[str]) -> tuple[int, str]:
    """Call a command's main(argv) in-process; (exit code, stderr)."""
    from byol import pipeline
    from byol.extract import extract_command as extract, latent_command as latent
    main = {"main": train_command.main, "pipeline": pipeline.main, "extract": extract.main,
            "latent": latent.main}[command]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return stopped.value.code, capsys.readouterr().err.strip()


def test_shared_flags_have_one_default_in_every_command():
    parsed = {name: vars(cli.parse_arguments(p, need)) for name, (p, need) in parsers().items()}
    extract, latent = parsed["extract"], parsed["latent"]
    for flag in ("batch_size", "num_workers", "device", "trust_checkpoint", "overwrite", "no_progress"):
        assert extract[flag] == latent[flag], flag
    assert extract["num_workers"] is None and extract["batch_size"] == 256 and extract["device"] == "auto"
    assert extract["precision"] == "fp32" and "precision" not in latent
    assert parsed["main"]["config"] is parsed["pipeline"]["config"] is extract["config"] is None
    assert parsed["main"]["resume"] == "runs/byol" and parsed["pipeline"]["head_epochs"] == 2
    assert all(p["overrides"] == [] for p in parsed.values())


def test_evaluation_flags_default_to_the_options_fields():
    p = __import__("argparse").ArgumentParser()
    add_common_arguments(p), add_baseline_arguments(p), add_head_arguments(p)
    args = vars(p.parse_args(["--train", "a", "--test", "b", "--method", "knn", "--head", "mlp"]))
    defaults = asdict(Options())
    assert {f.name for f in fields(Options)} <= set(args)          # every option has its flag
    assert {k: args[k] for k in defaults} == defaults
    changed = vars(p.parse_args(["--train", "a", "--test", "b", "--method", "knn", "--head", "mlp", "--C", "auto",
                                 "--k-grid", "3,7", "--no-verify", "--overwrite", "--hidden", "8,4"]))
    assert changed["C"] is None and changed["k_grid"] == (3, 7) and changed["hidden"] == (8, 4)
    assert changed["verify"] is False and changed["overwrite"] is True


@pytest.mark.parametrize("command", ["main", "pipeline", "extract", "latent"])
def test_overrides_are_accepted_the_same_way_everywhere(command):
    parser, need = parsers()[command]
    a, b = "trainer.seed=3", "data.root=/data"
    cut = 1 if command == "extract" else 2     # extract: right after the CHECKPOINT; else after a flag's value
    for argv in ([*need, a, b], [*need[:cut], a, *need[cut:], b], [*need, a, "--no-progress", b] if command in (
            "extract", "latent") else [*need, a, "--config", "x.yaml", b]):
        assert cli.parse_arguments(parser, argv).overrides == [a, b], argv


def test_latent_set_is_an_alias_applied_after_positional_overrides():
    parser, need = parsers()["latent"]
    args = cli.parse_arguments(parser, [*need, "--set", "data.root=/a", "trainer.seed=1", "--set", "data.root=/b"])
    assert args.overrides == ["trainer.seed=1", "data.root=/a", "data.root=/b"] and not hasattr(args, "set_overrides")
    assert load_config(None, cli.check_overrides(args.overrides)).data.root == "/b"     # the last one wins


@pytest.mark.parametrize("command", ["main", "pipeline", "extract", "latent"])
def test_unknown_key_is_one_error_line_naming_it(command, capsys, tmp_path):
    need = {"main": [], "pipeline": ["--config", DEMO],
            "extract": [str(tmp_path / "never-read.pt"), "--out", str(tmp_path / "f")],
            "latent": ["--checkpoint", str(tmp_path / "never-read.pt"), "--input", "a.jpg", "--out", str(tmp_path / "l")]}
    code, err = run_entry(capsys, command, [*need[command], "trainer.bach_size=3"])
    assert code == 2 and err.startswith("error: unknown config key 'trainer.bach_size'") and "\n" not in err, err
    assert "valid keys:" in err and "batch_size" in err
    code, err = run_entry(capsys, command, [*need[command], "trainer.max_epochs=many"])
    assert code == 2 and err == "error: config key 'trainer.max_epochs': expected an integer, got 'many'"
    assert not (tmp_path / "f").exists() and not (tmp_path / "l").exists()


def test_override_syntax_errors(capsys, tmp_path):
    code, err = run_entry(capsys, "main", ["trainer.max_epochs"])
    assert code == 2 and "'trainer.max_epochs' must look like section.key=value" in err
    code, err = run_entry(capsys, "latent", ["--checkpoint", "c.pt", "--out", "l", "--set", "nosection=1",
                                             "--input", "a.jpg"])
    assert code == 2 and "unknown config key 'nosection'" in err
    # --input takes every word up to the next flag: an override there is named, not read as a file
    code, err = run_entry(capsys, "latent", ["--checkpoint", "c.pt", "--out", str(tmp_path / "l"),
                                             "--input", "a.jpg", "data.root=/x"])
    assert code == 2 and "--input 'data.root=/x' is a config override" in err and "--set data.root=/x" in err
    # extract: the checkpoint comes first; an override in its place (or a second path) is named
    code, err = run_entry(capsys, "extract", ["data.root=/x", "enc.pt", "--out", str(tmp_path / "f")])
    assert code == 2 and "'data.root=/x' stands where the CHECKPOINT goes" in err
    code, err = run_entry(capsys, "extract", ["--out", str(tmp_path / "f")])
    assert code == 2 and "give the CHECKPOINT" in err
    code, err = run_entry(capsys, "extract", ["--encoder", "pixels", "enc.pt", "--out", str(tmp_path / "f")])
    assert code == 2 and "'enc.pt' must look like section.key=value" in err


def test_extract_pixels_takes_every_positional_argument_as_an_override(capsys, tmp_path):
    # argparse fills CHECKPOINT with the first positional argument; with --encoder pixels it is an override
    code, err = run_entry(capsys, "extract", ["--encoder", "pixels", "--out", str(tmp_path / "p"),
                                              "trainer.bach_size=3", "data.max_images=5"])
    assert code == 2 and err.startswith("error: unknown config key 'trainer.bach_size'"), err
    code, err = run_entry(capsys, "extract", ["--encoder", "pixels", "--out", str(tmp_path / "p"),
                                              "data.max_images=5", "trainer.bach_size=3"])
    assert code == 2 and err.startswith("error: unknown config key 'trainer.bach_size'"), err


def test_device_errors_carry_the_value_and_each_caller_names_its_setting(capsys, tmp_path):
    for bad, why in (("gpu", "not a device"), ("cuda:99", "CUDA GPU")):
        with pytest.raises(DeviceError) as raised:
            resolve_device(bad)
        assert raised.value.value == bad and why in raised.value.reason
        assert "trainer.device" not in str(raised.value) and "--device" not in str(raised.value)
    assert resolve_device("cpu") == torch.device("cpu")
    code, err = run_entry(capsys, "extract", [str(tmp_path / "never-read.pt"), "--out", str(tmp_path / "f"),
                                              "--device", "cuda:99"])
    assert code == 2 and err.startswith("error: --device is 'cuda:99' but ") and "use --device cpu" in err, err
    with pytest.raises(ConfigError, match=r"^--device is 'gpu' but that is not a device"):
        cli.usable_device("gpu")
    assert cli.usable_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match=r"^config key 'trainer.device' is 'cuda:99' but .*use trainer.device=cpu"):
        train_command.config_for_run(DEMO, ["trainer.device=cuda:99", f"trainer.run_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_fresh_or_resume_is_decided_once(tmp_path):
    run = tmp_path / "run"
    cfg, resume = train_command.config_for_run(DEMO, [f"trainer.run_dir={run}", "trainer.seed=5"])
    assert resume is None and cfg.trainer.seed == 5 and cfg.data.name == "digits"
    cfg, resume = train_command.config_for_run(DEMO, [f"trainer.run_dir={run}"], resume_if_found=True)
    assert resume is None                                  # nothing there yet: a fresh run
    saved = load_config(DEMO, [f"trainer.run_dir={run}", "trainer.max_steps=7", "trainer.seed=9"])
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"format": "byol-checkpoint", "config": to_dict(saved)}, run / "checkpoints" / "last.pt")
    for cfg, resume in (train_command.config_for_run(DEMO, [f"trainer.run_dir={run}", "trainer.seed=1"],
                                                     resume_if_found=True),
                        train_command.config_for_run(None, ["trainer.seed=1"], run)):
        assert resume == run and cfg.trainer.max_steps == 7      # the run's saved config ...
        assert cfg.trainer.seed == 1 and cfg.trainer.run_dir == str(run)   # ... with the overrides on top
    with pytest.raises(ConfigError, match="no checkpoint"):
        train_command.config_for_run(None, [], tmp_path / "no-run")
    with pytest.raises(ConfigError, match="config file 'nowhere.yaml' not found"):
        train_command.config_for_run("nowhere.yaml", [])


def test_cli_and_evaluation_options_never_import_torch():
    code = "import sys, byol.command_line, byol.evaluate.options; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
