"""Config schema: defaults <- YAML <- overrides, strict keys and types, round trip."""
import pytest
import yaml

from byol.base.errors import ConfigError
from byol.config import Config, from_dict, load_config, save_config, to_dict

SEED_CONFIG = """\
network:
  name: resnet18
  fine_tune_from: 'resnet-18_40-epochs'
  projection_head:
    mlp_hidden_size: 512
    projection_size: 128
data_transforms:
  s: 1
  input_shape: (96,96,3)
trainer:
  batch_size: 64
  m: 0.996
  checkpoint_interval: 5000
  max_epochs: 80
  num_workers: 4
optimizer:
  params:
    lr: 0.03
    momentum: 0.9
    weight_decay: 0.0004
"""


def test_seed_config_loads_unchanged(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(SEED_CONFIG)
    cfg = load_config(path)
    assert cfg.data_transforms.input_shape == (96, 96, 3)
    assert cfg.network.fine_tune_from == "resnet-18_40-epochs"
    assert cfg.optimizer.params.weight_decay == pytest.approx(4e-4)
    assert cfg.trainer.batch_size == 64 and cfg.trainer.m == pytest.approx(0.996)


def test_repository_configs_load():
    cfg = load_config("config.yaml")
    assert (cfg.network.name, cfg.trainer.batch_size, cfg.optimizer.params.lr) == ("resnet18", 64, 0.03)
    assert cfg.trainer.max_epochs == 80 and cfg.data.name == "stl10"
    demo = load_config("configs/demo.yaml")
    assert demo.data.name == "digits" and demo.data_transforms.input_shape == (16, 16, 3)


def test_overrides_take_precedence_and_parse_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  max_epochs: 5\n")
    cfg = load_config(path, ["trainer.max_epochs=1", "data.root=/data", "trainer.use_momentum=false",
                             "optimizer.params.lr=0.5", "network.fine_tune_from=null",
                             "data_transforms.input_shape=64,64,3"])
    assert cfg.trainer.max_epochs == 1 and cfg.data.root == "/data"
    assert cfg.trainer.use_momentum is False and cfg.optimizer.params.lr == 0.5
    assert cfg.network.fine_tune_from is None
    assert cfg.data_transforms.input_shape == (64, 64, 3)


@pytest.mark.parametrize("override, fragment", [
    ("trainer.bach_size=3", "unknown config key 'trainer.bach_size'"),
    ("trainr.batch_size=3", "unknown config key 'trainr'"),
    ("trainer.batch_size=many", "'trainer.batch_size': expected an integer"),
    ("trainer.batch_size=1", "'trainer.batch_size': must be >= 2"),
    ("trainer.use_momentum=perhaps", "'trainer.use_momentum': expected true or false"),
    ("optimizer.name=rmsprop", "'optimizer.name': 'rmsprop' is not one of sgd, lars, adam"),
    ("network.name=vgg", "'network.name'"),
    ("data_transforms.input_shape=(96,64,3)", "square"),
    ("data_transforms.input_shape=(8,8,3)", "too small"),
    ("trainer.m=1.5", "'trainer.m'"),
    ("trainer=3", "'trainer' must be a section"),
    ("no_equals_sign", "section.key=value"),
])
def test_bad_keys_and_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        from_dict({"trainer": {"epochs": 3}})
    assert "valid keys:" in str(err.value) and "max_epochs" in str(err.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["trainer.seed=7", "network.name=resnet50"])
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert again == cfg
    assert to_dict(again) == yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert from_dict(to_dict(Config())) == Config()
