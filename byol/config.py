"""One config schema for every entry point: dataclass defaults <- YAML file <- `section.key=value`.

The dataclasses below *are* the schema. Unknown keys and values of the wrong type are errors
(`ConfigError`) that name the key and list the valid ones, so a typo never silently falls back to
a default. The resolved config is a plain dict (`to_dict`) saved with every run, checkpoint and
shard; `from_dict` reads it back with the same checks.

The key names of sthalles/PyTorch-BYOL's `config.yaml` are kept, so that file works unchanged
(including its `input_shape: (96,96,3)` written as a string).
"""
from __future__ import annotations

import ast
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from byol.base.atomic import atomic_write_text
from byol.base.durations import parse_duration
from byol.base.errors import ConfigError
from byol.encoders.names import check_network_name, is_resnet_name


@dataclass
class ProjectionHead:
    mlp_hidden_size: int = 512   # sthalles' STL-10 setup; the paper uses 4096
    projection_size: int = 128   # sthalles; the paper uses 256


@dataclass
class PredictorHead:
    mlp_hidden_size: int = 0     # 0: same as projection_head.mlp_hidden_size (paper: 4096 both)


@dataclass
class Network:
    name: str = "resnet18"                      # any torchvision classification builder (resnet50, convnext_tiny,
                                                # efficientnet_b0, vit_b_16, ...), a torchvision model class, timm:NAME
    kwargs: dict = field(default_factory=dict)  # the builder's keyword arguments, e.g. {image_size: 32} for vit_b_16
    fine_tune_from: str | None = None           # checkpoint (ours or foreign) to start from
    small_stem: bool | None = None              # ResNets: 3x3 conv, no max-pool; None: auto (input <= 64 px)
    projection_head: ProjectionHead = field(default_factory=ProjectionHead)
    predictor_head: PredictorHead = field(default_factory=PredictorHead)


@dataclass
class Data:
    name: str = "stl10"              # stl10 | cifar10 | cifar100 | folder | digits (embedded, no download)
    root: str = "./data"             # stl10: folder holding stl10_binary/; cifar10 / cifar100: holding
                                     # cifar-10-batches-py/ / cifar-100-python/; folder: the image folder
    split: str = "train+unlabeled"   # stl10: train | test | unlabeled | train+unlabeled | train-fold-K;
                                     # cifar10 / cifar100: train | test
    download: bool = True            # stl10, cifar10, cifar100: fetch the official archive (MD5-checked) if absent
    eval_split: str = "test"         # labelled split for the online kNN monitor
    knn_train_split: str = "train"   # labelled split the kNN monitor uses as its memory bank
    on_bad_image: str = "skip"       # folder: skip (counted in the log) | error
    max_images: int = 0              # 0: all; >0 keeps the first N (quick experiments, tests)


@dataclass
class DataTransforms:
    s: float = 1.0                              # colour-jitter strength (SimCLR's s)
    input_shape: tuple[int, int, int] = (96, 96, 3)   # H, W, C of the views fed to the encoder
    min_scale: float = 0.08                     # random-resized-crop lower scale bound (Table 6)
    blur: bool | None = None                    # Gaussian blur (Table 6); None: auto, off for views <= 32 px
    local_crops: int = 0                        # multi-crop: extra small views per image, online network only
    local_size: int = 0                         # their side in px; 0: 3/7 of the view side (DINO's 96 for 224)
    local_scale: tuple[float, float] = (0.05, 0.3)   # their random-resized-crop area range


@dataclass
class Trainer:
    batch_size: int = 64             # per process; global batch = batch_size * world size
    m: float | str = 0.996           # base EMA rate tau_base (Sec. 3.2), or auto: from the planned steps
    m_schedule: str = "cosine"       # cosine: tau goes tau_base -> 1 over training | constant
    use_momentum: bool = True        # false: target = online (stop-grad), i.e. SimSiam
    checkpoint_interval: int = 5000  # steps between checkpoints (plus one at each epoch end)
    epoch_checkpoints: bool = True   # false: no checkpoint at epoch ends (the interval's and the last still written)
    max_epochs: int = 80             # passes over the training split (max_steps and max_time can end it sooner)
    max_steps: int = 0               # >0 stops after this many steps (overrides max_epochs)
    max_time: float | str = 0.0      # time budget: 90s | 45m | 2h | 1h30m | seconds | slurm (this job's time
                                     # left); 0 = off. Sets the steps so the schedules end at it (max_epochs
                                     # and max_steps become upper bounds); the chosen total is saved as max_steps
    max_time_margin: float | str = 300.0  # (5m) max_time=slurm: time kept back for the last checkpoint and export
    num_workers: int = 4             # DataLoader workers (image decoding / file reads)
    run_dir: str = "runs/byol"       # where the run writes: config.yaml, metrics, checkpoints/, encoder.pt
    seed: int = 0                    # seeds initialisation, data order and augmentations (resume is exact)
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    precision: str = "auto"          # auto (bf16 where fast, else fp32) | fp32 | bf16 | fp16 (CUDA)
    channels_last: bool = True       # NHWC convolutions: faster with bf16 on CPU and on GPUs
    log_every: int = 10              # steps between metrics.jsonl rows
    knn_every: int = 0               # epochs between online kNN evaluations; 0 = off
    knn_k: int = 200                 # kNN monitor neighbours (Wu et al. 2018: k=200, T=0.07), as eval/'s knn
    tensorboard: bool = True         # also write TensorBoard scalars when tensorboard is installed
    progress: bool = True            # tqdm progress bar


@dataclass
class OptimizerParams:
    lr: float = 0.03                 # the base learning rate (before lr_scaling and the schedule)
    momentum: float = 0.9            # SGD and LARS momentum (adam: unused, torch's default betas)
    weight_decay: float = 0.0004     # L2 weight decay (adam: added to the gradient, as torch.optim.Adam does)


@dataclass
class Optimizer:
    name: str = "sgd"                # sgd | lars | adam
    params: OptimizerParams = field(default_factory=OptimizerParams)
    lr_schedule: str = "cosine"      # cosine (after warmup) | constant
    warmup_epochs: float = 0.0       # linear warmup (paper: 10 epochs of 1000)
    lr_scaling: str = "none"         # none | linear: lr * global_batch / 256 (paper)
    lars_eta: float = 0.001          # LARS trust coefficient
    exclude_bias_and_norm: bool = True   # no weight decay / LARS adaptation on biases and BN
    predictor_lr_scale: float = 1.0  # the predictor's LR = the schedule's x this (DirectPred, SimSiam: > 1 helps)


@dataclass
class Config:
    network: Network = field(default_factory=Network)
    data: Data = field(default_factory=Data)
    data_transforms: DataTransforms = field(default_factory=DataTransforms)
    trainer: Trainer = field(default_factory=Trainer)
    optimizer: Optimizer = field(default_factory=Optimizer)


CHOICES = {
    "data.name": ("stl10", "cifar10", "cifar100", "folder", "digits"),
    "data.on_bad_image": ("skip", "error"),
    "trainer.m_schedule": ("cosine", "constant"),
    "trainer.precision": ("auto", "fp32", "bf16", "fp16"),
    "optimizer.name": ("sgd", "lars", "adam"),
    "optimizer.lr_schedule": ("cosine", "constant"),
    "optimizer.lr_scaling": ("none", "linear"),
}


# ------------------------------------------------------------------ conversion with type checks
def _coerce(key: str, value, annotation):
    """Return `value` as `annotation`, or raise ConfigError naming `key`."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null", "~") and type(None) in args:
            return None
        if float in args and str in args:   # a number, or a word such as "auto" (validate() checks it)
            try:
                return _coerce(key, value, float)
            except ConfigError:
                return _coerce(key, value, str)
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):   # "(96,96,3)" as in the seed's config.yaml, or "96,96,3"
            try:
                value = ast.literal_eval(value if value.strip().startswith(("(", "[")) else f"({value})")
            except (ValueError, SyntaxError):
                raise ConfigError(f"config key '{key}': cannot read {value!r} as a tuple like (96,96,3)")
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key '{key}': expected {len(args)} values like (96,96,3), got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if hint is dict or typing.get_origin(hint) is dict:
        if isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items()):
            return dict(value)
        raise ConfigError(f"config key '{key}': expected a mapping of names to plain values like "
                          f"{{image_size: 32}}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if hint in (int, float):     # "3" -> 3 and 3.0 -> 3 for integer keys; 3 -> 3.0 for numbers; never a bool
        if isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and (
                hint is float or isinstance(value, int) or value.is_integer()):
            return hint(value)
        raise ConfigError(f"config key '{key}': expected {'an integer' if hint is int else 'a number'}, "
                          f"got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # a bug in this file


def _plain(value) -> bool:
    """A YAML scalar or list of them: what a config (saved in checkpoints, read weights_only) may hold."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _build(cls, values: dict, prefix: str):
    """Build dataclass `cls` from a (possibly partial) nested dict; strict about keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.')}' must be a section (a mapping), got {values!r}")
    hints = _hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' in {where}; "
                          f"valid keys: {', '.join(sorted(hints))}")
    kwargs = {}
    for name, hint in hints.items():
        if name not in values:
            continue
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, values[name] if values[name] is not None else {}, key + ".")
        else:
            kwargs[name] = _coerce(key, values[name], hint)
            if key in CHOICES and kwargs[name] not in CHOICES[key]:
                raise ConfigError(f"config key '{key}': {kwargs[name]!r} is not one of "
                                  f"{', '.join(CHOICES[key])}")
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """['trainer.max_epochs=1', 'data.root=/d'] -> nested dict of YAML-parsed values."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value "
                              f"(e.g. trainer.max_epochs=1)")
        key, raw = item.split("=", 1)
        parts = key.strip().lstrip("-").split(".")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of '{p}'")
        node[parts[-1]] = value
    return nested


def validate(cfg: Config) -> Config:
    """Checks that span several keys or need a range; raise ConfigError naming the key."""
    h, w, c = cfg.data_transforms.input_shape
    if h != w:
        raise ConfigError(f"config key 'data_transforms.input_shape': only square views are supported, got {h}x{w}")
    if h < 16:
        raise ConfigError(f"config key 'data_transforms.input_shape': {h} px is too small for a ResNet "
                          f"(use at least 16; 32 with network.small_stem=true, 96+ otherwise)")
    if c != 3:
        raise ConfigError(f"config key 'data_transforms.input_shape': channels must be 3 (images are "
                          f"converted to RGB), got {c}")
    for key, value, low in [("trainer.batch_size", cfg.trainer.batch_size, 2),
                            ("trainer.checkpoint_interval", cfg.trainer.checkpoint_interval, 1),
                            ("trainer.log_every", cfg.trainer.log_every, 1),
                            ("trainer.max_epochs", cfg.trainer.max_epochs, 1),
                            ("trainer.num_workers", cfg.trainer.num_workers, 0),
                            ("trainer.max_steps", cfg.trainer.max_steps, 0),
                            ("network.projection_head.mlp_hidden_size", cfg.network.projection_head.mlp_hidden_size, 1),
                            ("network.projection_head.projection_size", cfg.network.projection_head.projection_size, 1)]:
        if value < low:
            raise ConfigError(f"config key '{key}': must be >= {low}, got {value}"
                              + (" (BatchNorm needs at least 2 samples per batch)" if key == "trainer.batch_size" else ""))
    if isinstance(cfg.trainer.m, str):
        if cfg.trainer.m != "auto":
            raise ConfigError(f"config key 'trainer.m': expected a number in [0, 1] or auto, got {cfg.trainer.m!r}")
    elif not 0.0 <= cfg.trainer.m <= 1.0:
        raise ConfigError(f"config key 'trainer.m': EMA rate must be in [0, 1], got {cfg.trainer.m}")
    tf = cfg.data_transforms
    if tf.local_crops < 0 or tf.local_size < 0:
        raise ConfigError("config keys 'data_transforms.local_crops' and 'data_transforms.local_size' must be >= 0")
    if tf.local_crops and not 0.0 < tf.local_scale[0] < tf.local_scale[1] <= 1.0:
        raise ConfigError(f"config key 'data_transforms.local_scale': expected (low, high) with "
                          f"0 < low < high <= 1, got {tf.local_scale}")
    if not 0.0 < cfg.data_transforms.min_scale <= 1.0:
        raise ConfigError(f"config key 'data_transforms.min_scale': must be in (0, 1], got {cfg.data_transforms.min_scale}")
    if cfg.optimizer.predictor_lr_scale <= 0:
        raise ConfigError(f"config key 'optimizer.predictor_lr_scale': must be > 0, got {cfg.optimizer.predictor_lr_scale}")
    if cfg.optimizer.params.lr <= 0:
        raise ConfigError(f"config key 'optimizer.params.lr': must be > 0, got {cfg.optimizer.params.lr}")
    # durations parsed here, once: every later reader gets seconds (a float) or "slurm"
    t = cfg.trainer
    slurm = str(t.max_time).strip().lower() == "slurm"
    t.max_time = "slurm" if slurm else parse_duration(t.max_time, "trainer.max_time", ", 0 (off) or slurm")
    t.max_time_margin = parse_duration(t.max_time_margin, "trainer.max_time_margin")
    check_network_name(cfg.network.name)
    return cfg


def from_dict(values: dict) -> Config:
    return validate(_build(Config, values or {}, ""))


def to_dict(cfg: Config) -> dict:
    """Plain nested dict of primitives (tuples as lists): safe for YAML, JSON, HDF5 attrs, torch.save."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(cfg))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> Config:
    """defaults <- `base` (e.g. a checkpoint's saved config) <- YAML `path` <- `overrides`."""
    values = dict(base or {})
    if path is not None:
        path = find_config_file(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML: {e}")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file '{path}' must hold sections like 'trainer:', got {type(loaded).__name__}")
        values = _merge(values, loaded)
    values = _merge(values, parse_overrides(overrides or []))
    try:
        return from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"{e} [config file: {path}]" if path is not None else str(e)) from None


# The repository's config.yaml and configs/*.yaml, shipped inside the package (byol/configs/ links
# to them), so `byol train --config configs/demo.yaml` works from any folder once byol is installed.
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def find_config_file(path: str | Path) -> Path:
    """`path` if it is a file; else the packaged config of that name (config.yaml, demo.yaml, `demo`)."""
    path = Path(path)
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    packaged = PACKAGED_CONFIGS / name
    if not path.is_absolute() and packaged.is_file():
        return packaged
    shipped = ", ".join(sorted(p.name for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file '{path}' not found; pass --config FILE, or one of the configs shipped with "
                      f"byol ({shipped}), or create it (config.yaml in the repository documents every key)")


def save_config(cfg: Config, path: str | Path, header: str = "") -> None:
    """Write the resolved config as YAML (after `header`, comment lines), atomically (temp file + rename)."""
    atomic_write_text(path, header + yaml.safe_dump(to_dict(cfg), sort_keys=False))


def small_stem_for(cfg: Config) -> bool:
    """network.small_stem, with None = on for ResNets at <= 64 px (SimCLR's CIFAR stem), else off."""
    s = cfg.network.small_stem
    if s is None:
        return cfg.data_transforms.input_shape[0] <= 64 and is_resnet_name(cfg.network.name)
    return s
