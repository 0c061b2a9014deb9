"""The bad-input corpus, through the commands users run. Every input is generated here (no binary
blobs in git) and ends in one of three documented outcomes:

    error      the command exits 2 with one line `error: ...` naming the file or key; nothing written
    skipped    the file is left out and counted in the log; the store holds only the readable images
    converted  read as documented: RGB, upright by EXIF, white under transparency, 16-bit scaled to 8

Images go through `python -m byol.extract --encoder pixels` so that the stored values can be
checked; checkpoints through `byol.extract.extract_command` and `main.py --resume`; configs through `load_config`
(property-based: random keys and values). Feature-store corruption (flipped bytes, missing shard,
manifest disagreeing with its shards, wrong dimensions, encoders or labels) is covered in
test_store.py and test_evaluate.py.
"""
import io
import logging
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from byol.base.errors import ConfigError
from byol.config import Config, from_dict, load_config, to_dict
from byol.extract.extract_command import main as extract_main
from byol.store import FeatureStore

from testkit import REPO, run_main

SIZE = 32


def assert_one_line_error(code, out, err, *fragments):
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and out == "" and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# --------------------------------------------------------------------------- images

def png_bomb(path: Path, side: int = 40_000) -> None:
    """A PNG whose header declares side x side pixels (1.6 gigapixels): Pillow must refuse to open it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def halves(left: int, right: int) -> np.ndarray:
    a = np.full((SIZE, SIZE, 3), left, np.uint8)
    a[:, SIZE // 2:] = right
    return a


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def noise_jpeg() -> bytes:
    return jpeg_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), np.uint8)))


def make_exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6      # Orientation 6: rotate 90 degrees clockwise to display
    path.write_bytes(jpeg_bytes(Image.fromarray(halves(0, 255)), exif=exif.tobytes()))


def make_palette_transparent(path: Path) -> None:
    im = Image.new("P", (SIZE, SIZE), 1)
    im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    im.paste(0, (0, 0, SIZE // 2, SIZE))          # left half: palette index 0, declared transparent
    im.save(path, transparency=0)


IMAGE_CASES = {
    # name: (file name, writer, outcome)
    "zero-byte": ("empty.jpg", lambda p: p.write_bytes(b""), "skipped"),
    "text named .jpg": ("notes.jpg", lambda p: p.write_text("not an image\n"), "skipped"),
    "html named .png": ("page.png", lambda p: p.write_text("<html>404</html>"), "skipped"),
    "truncated header": ("cut.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00"), "skipped"),
    "decompression bomb": ("bomb.png", png_bomb, "skipped"),
    "truncated jpeg data": ("cut.jpg", lambda p: p.write_bytes(noise_jpeg()[: len(noise_jpeg()) * 2 // 3]), "error"),
    "grayscale": ("gray.png", lambda p: Image.fromarray(halves(40, 220)[..., 0], "L").save(p), "converted"),
    "palette with transparency": ("palette.png", make_palette_transparent, "converted"),
    "RGBA with alpha 0": ("rgba.png", lambda p: Image.fromarray(
        np.dstack([halves(10, 10), halves(0, 255)[..., :1]]), "RGBA").save(p), "converted"),
    "CMYK jpeg": ("cmyk.jpg", lambda p: p.write_bytes(jpeg_bytes(Image.new("CMYK", (SIZE, SIZE), (255, 0, 0, 0)))),
                  "converted"),
    "16-bit png": ("deep.png", lambda p: Image.fromarray(
        (halves(0, 255)[..., 0].astype(np.uint16) * 257 // 2)).save(p), "converted"),
    "EXIF-rotated jpeg": ("rotated.jpg", make_exif_rotated, "converted"),
}


def expected_pixels(case: str) -> tuple[np.ndarray, float]:
    """uint8 [S, S, 3] the documented conversion must give, and the tolerance (JPEG is lossy)."""
    if case == "grayscale":
        return halves(40, 220), 0
    if case == "palette with transparency":
        a = np.empty((SIZE, SIZE, 3), np.uint8)
        a[:, :SIZE // 2], a[:, SIZE // 2:] = 255, (200, 30, 30)     # transparent -> white
        return a, 0
    if case == "RGBA with alpha 0":
        a = np.full((SIZE, SIZE, 3), 10, np.uint8)
        a[:, :SIZE // 2] = 255
        return a, 0
    if case == "CMYK jpeg":
        return np.broadcast_to(np.array([0, 255, 255], np.uint8), (SIZE, SIZE, 3)), 12   # pure cyan
    if case == "16-bit png":
        return halves(0, 127), 1                 # 255 * 257 // 2 = 32767 -> 32767 / 257 = 127.5
    if case == "EXIF-rotated jpeg":             # left black / right white, turned clockwise:
        a = np.full((SIZE, SIZE, 3), 255, np.uint8)    # top black, bottom white
        a[:SIZE // 2] = 0
        return a, 40     # JPEG ringing at the edge
    raise KeyError(case)


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_corpus(case, tmp_path, capsys, caplog):
    name, write, outcome = IMAGE_CASES[case]
    folder = tmp_path / "images" / "cls"
    folder.mkdir(parents=True)
    Image.fromarray(halves(100, 150)).save(folder / "good.png")
    write(folder / name)
    out = tmp_path / "store"
    argv = ["--encoder", "pixels", "--split", "train", "--out", str(out), "--config", str(REPO / "config.yaml"),
            "--no-progress", "data.name=folder", f"data.root={tmp_path / 'images'}",
            f"data_transforms.input_shape=({SIZE},{SIZE},3)"]
    with caplog.at_level(logging.WARNING, logger="byol"):
        code, stdout, err = run_main(extract_main, argv, capsys)
    if outcome == "error":       # decodable header, undecodable data: no row may be written for it
        assert_one_line_error(code, stdout, err, str(folder / name))
        assert not (out / "train" / "manifest.json").exists()
        return
    assert code == 0, err[-2000:]
    store = FeatureStore.open(out / "train", verify=True)
    rows = {path: row for path, row in zip(store.paths(), store.to_array())}
    if outcome == "skipped":
        assert list(rows) == ["cls/good.png"]
        assert f"skipped 1 of 2 files in '{tmp_path / 'images'}'" in caplog.text
        return
    assert sorted(rows) == sorted(["cls/good.png", f"cls/{name}"])
    pixels = np.rint(rows[f"cls/{name}"].reshape(3, SIZE, SIZE).transpose(1, 2, 0) * 255)
    want, tolerance = expected_pixels(case)
    assert np.abs(pixels - want).max() <= tolerance, (pixels[::8, ::8, 0], want[::8, ::8, 0])


# --------------------------------------------------------------------------- checkpoints

@pytest.fixture
def run_dir(trained_run):
    """The shared tiny trained run (1 step, tests/conftest.py): the good files the cases damage. Read only."""
    return trained_run


class RunsShell:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/byol-malicious-pickle-ran")

CHECKPOINT_CASES = {
    # name: (writer(path, run_dir), words the error must hold besides the file name)
    "zero-byte": (lambda p, r: p.write_bytes(b""), "is empty"),
    "truncated": (lambda p, r: p.write_bytes((r / "encoder.pt").read_bytes()[:5000]), "truncated"),
    "text file": (lambda p, r: p.write_text("weights: soon\n"), "not a PyTorch file"),
    "a list, not a dict": (lambda p, r: torch.save([torch.zeros(3)], p), "holds a list"),
    "foreign model": (lambda p, r: torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2))
                                              .state_dict(), p), "ResNet"),
    "malicious pickle": (lambda p, r: p.write_bytes(pickle.dumps({"state_dict": RunsShell()})),
                         "--trust-checkpoint"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_checkpoint_corpus_through_extract(case, run_dir, tmp_path, capsys):
    write, words = CHECKPOINT_CASES[case]
    path = tmp_path / "model.pt"
    write(path, run_dir)
    MARKER.unlink(missing_ok=True)
    code, out, err = run_main(extract_main, [str(path), "--split", "test", "--out", str(tmp_path / "f"),
                                             "--config", str(REPO / "config.yaml"), "--no-progress",
                                             "data.name=digits"], capsys)
    assert_one_line_error(code, out, err, str(path), words)
    assert not MARKER.exists() and not (tmp_path / "f").exists()


@pytest.mark.parametrize("case", ["zero-byte", "truncated", "malicious pickle", "foreign model"])
def test_checkpoint_corpus_through_resume(case, run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    last = run / "checkpoints" / "last.pt"
    if case == "truncated":
        last.write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes()[:5000])
    else:
        CHECKPOINT_CASES[case][0](last, run_dir)
    MARKER.unlink(missing_ok=True)
    code, out, err = run_main(REPO / "main.py", ["--resume", str(run)], capsys)
    assert_one_line_error(code, out, err, str(last))
    assert not MARKER.exists()


# --------------------------------------------------------------------------- configs (property-based)

def known_keys() -> dict[str, object]:
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = value
    walk("", to_dict(Config()))
    return flat


KEYS = known_keys()
key_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.0123456789", min_size=1, max_size=24)
keys = st.one_of(st.sampled_from(sorted(KEYS)), key_text,
                 st.builds(lambda k, s: f"{k}.{s}", st.sampled_from(sorted(KEYS)), key_text))
values = st.one_of(st.text(max_size=12).filter(lambda s: "\n" not in s and "\r" not in s),
                   st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(str),
                   st.sampled_from(["true", "false", "null", "[]", "{}", "(16,16,3)", "1e-3", "-1", "0"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, values), min_size=1, max_size=4))
def test_random_overrides_either_load_or_name_the_key(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(None, overrides)
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message.strip() and any(k.split(".")[0] in message for k, _ in pairs), message
        return
    assert from_dict(to_dict(cfg)) == cfg            # what loads round-trips, with the schema's types
    for key, default in KEYS.items():
        section, *rest = key.split(".")
        value = to_dict(cfg)[section]
        for part in rest:
            value = value[part]
        assert default is None or value is None or isinstance(value, type(default)) or \
            (isinstance(default, float) and isinstance(value, int)), (key, value)


yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=8)),
                           lambda children: st.one_of(st.lists(children, max_size=3),
                                                      st.dictionaries(key_text, children, max_size=3)),
                           max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(sorted({k.split(".")[0] for k in KEYS})), key_text),
                       yaml_values, max_size=3))
def test_random_yaml_files_either_load_or_name_the_file_or_key(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load_config(path)
    except ConfigError as e:
        message = str(e)
        assert str(path) in message or "config key" in message or any(str(k) in message for k in document), message


@pytest.mark.parametrize("text, words", [
    ("trainer: {batch_size: 8\n", "is not valid YAML"),
    ("- just\n- a list\n", "must hold sections like"),
    ("trainer:\n  batch_sise: 8\n", "unknown config key 'trainer.batch_sise'"),
])
def test_broken_config_files_through_main(tmp_path, capsys, text, words):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code, out, err = run_main(REPO / "main.py", ["--config", str(path)], capsys)
    assert_one_line_error(code, out, err, words)
