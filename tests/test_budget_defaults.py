"""Defaults for a time budget (byol/pretrain/budget_defaults.py): with trainer.max_time set, the keys you
did not set take the values measured to learn the most in a short run; yours always win; without a
budget config.yaml means what it always meant; the log and RUN_DIR/config.yaml name the choices."""
import logging

import pytest
import yaml

from byol.config import load_config, save_config
from byol.pretrain.budget_defaults import BUDGET_DEFAULTS, config_header, keys_set_by_user, with_budget_defaults
from byol.pretrain.command import config_for_run
from byol.pretrain.command import main as train_main
from byol.pretrain.optim import Schedule

from testkit import REPO, TINY, run_main

CONFIG = REPO / "config.yaml"

# What `python main.py trainer.max_time=20m` picks over config.yaml (the README's "Defaults for a time
# budget" table measured these; change both together).
EXPECTED = {"trainer.batch_size": 128, "optimizer.params.lr": 0.2, "optimizer.warmup_epochs": 0.1, "trainer.m": "auto"}


def value(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_a_budget_picks_the_measured_values_for_every_key_you_left_unset():
    assert [d.key for d in BUDGET_DEFAULTS] == list(EXPECTED)
    plain = load_config(CONFIG)
    cfg, _ = config_for_run(CONFIG, ["trainer.max_time=20m"])
    for key, picked in EXPECTED.items():
        assert value(cfg, key) == picked
    changed = {key for key in EXPECTED if value(plain, key) != EXPECTED[key]}
    _, applied = with_budget_defaults(load_config(CONFIG, ["trainer.max_time=20m"]), set())
    assert {d.key for d in applied} == changed             # the list names exactly the values it changed


def test_without_a_budget_config_yaml_means_what_it_meant():
    cfg, _ = config_for_run(CONFIG, ["trainer.max_epochs=3"])
    assert cfg == load_config(CONFIG, ["trainer.max_epochs=3"])
    assert with_budget_defaults(cfg, set()) == (cfg, [])


@pytest.mark.parametrize("default", BUDGET_DEFAULTS, ids=lambda d: d.key)
def test_a_value_on_the_command_line_wins(default):
    schema_default = value(load_config(None), default.key)           # even one equal to the schema's default
    cfg, _ = config_for_run(CONFIG, ["trainer.max_time=20m", f"{default.key}={schema_default}"])
    assert value(cfg, default.key) == schema_default


def test_the_sgd_learning_rate_follows_the_batch_you_chose_and_not_another_optimizer():
    cfg, _ = config_for_run(CONFIG, ["trainer.max_time=20m", "trainer.batch_size=256"])
    assert (cfg.trainer.batch_size, cfg.optimizer.params.lr) == (256, 0.4)      # 0.2 per 128 images
    cfg, _ = config_for_run(CONFIG, ["trainer.max_time=20m", "optimizer.name=adam"])
    assert cfg.optimizer.params.lr == load_config(CONFIG).optimizer.params.lr  # measured for SGD only: kept
    assert cfg.trainer.m == "auto" and cfg.trainer.batch_size == 128           # the rest still applies


def test_a_config_file_wins_where_it_departs_from_the_defaults(tmp_path):
    mine = tmp_path / "mine.yaml"           # batch 64 restates the schema's default; warmup 0.5 departs from it
    mine.write_text(yaml.safe_dump({"trainer": {"max_time": "20m", "seed": 7, "batch_size": 64},
                                    "optimizer": {"warmup_epochs": 0.5}}))
    assert keys_set_by_user(mine, []) == {"trainer.max_time", "trainer.seed", "optimizer.warmup_epochs"}
    cfg, _ = config_for_run(mine, [])
    assert (cfg.trainer.batch_size, cfg.optimizer.warmup_epochs, cfg.trainer.seed) == (128, 0.5, 7)
    shipped = keys_set_by_user(CONFIG, ["data.root=/x"])
    assert shipped == {"data.root"}                      # the shipped config.yaml restates the schema's defaults


def test_the_log_and_the_saved_config_name_the_choices(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="byol"):
        cfg, applied = with_budget_defaults(load_config(CONFIG, ["trainer.max_time=20m", "trainer.seed=3"]),
                                            {"trainer.seed", BUDGET_DEFAULTS[-1].key})
    for d in applied:
        assert f"{d.key}={value(cfg, d.key)} (budget default: {d.why})" in caplog.text
    assert f"kept your {BUDGET_DEFAULTS[-1].key}=" in caplog.text
    path = tmp_path / "config.yaml"
    save_config(cfg, path, config_header(cfg))
    text = path.read_text()
    assert text.startswith("# trainer.max_time=20m: these keys hold the time-budget defaults")
    assert [d.key for d in applied] == [d.key for d in BUDGET_DEFAULTS[:-1]]
    for d in applied:
        assert f"#   {d.key}={value(cfg, d.key)}: {d.why}" in text
    assert load_config(path) == cfg                     # the comment does not change what the file says
    assert config_header(load_config(CONFIG)) == ""    # no budget, no comment


def test_a_resumed_run_keeps_its_saved_values(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    key = BUDGET_DEFAULTS[0].key
    schema_default = value(load_config(None), key)
    save_config(load_config(CONFIG, ["trainer.max_time=20m", f"{key}={schema_default}"]), run / "config.yaml")
    cfg, resume = config_for_run(None, [], resume=run)         # stopped before its first checkpoint
    assert resume == run and value(cfg, key) == schema_default


def test_tau_follows_the_number_of_steps_the_budget_picks():
    cfg, _ = config_for_run(CONFIG, ["trainer.max_time=20m"])
    taus = {steps: Schedule(steps, 0, 0.1, cfg.trainer.m).base_tau for steps in (400, 10_000, 1_000_000)}
    assert taus == pytest.approx({400: 0.9, 10_000: 0.97, 1_000_000: 0.996})


def test_training_to_a_budget_saves_and_logs_its_defaults(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_main(train_main, [*TINY, "trainer.max_steps=3", "trainer.max_time=10m",
                                           f"trainer.run_dir={run}"], capsys)
    assert code == 0, err
    saved = load_config(run / "config.yaml")
    assert saved.trainer.batch_size == 16                   # TINY's: yours win
    assert saved.optimizer.params.lr == 0.2 * 16 / 128      # the LR follows the batch you chose
    assert (saved.optimizer.warmup_epochs, saved.trainer.m) == (0.1, "auto")
    assert (run / "config.yaml").read_text().startswith("# trainer.max_time=10m")
