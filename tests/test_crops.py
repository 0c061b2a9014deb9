"""Training views cut from the whole image (byol/data/crops.py), multi-crop, blur and tau rules."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from byol.base.errors import ConfigError
from byol.config import load_config
from byol.data import FolderCropViews, ImageFolder, build_training_dataset
from byol.data.augment import BYOLViews, blur_enabled
from byol.data.image_folder import decode_crops
from byol.encoders.build import build_encoder
from byol.pretrain.model import OnlineNetwork, byol_loss
from byol.pretrain.optim import base_ema_rate

from testkit import write_stl10_binary

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture(scope="module")
def striped(tmp_path_factory):
    """Non-square images of different sizes whose centre square is pure green and whose outer
    parts are red (left/top) and blue (right/bottom): a crop showing red or blue reached outside
    the centre square."""
    root = tmp_path_factory.mktemp("striped")
    for name, (w, h) in {"wide.png": (150, 50), "tall.png": (40, 120), "wider.jpg": (400, 100)}.items():
        a = np.zeros((h, w, 3), np.uint8)
        side = min(w, h)
        if w > h:
            lo = (w - side) // 2
            a[:, :lo], a[:, lo:lo + side], a[:, lo + side:] = RED, GREEN, BLUE
        else:
            lo = (h - side) // 2
            a[:lo], a[lo:lo + side], a[lo + side:] = RED, GREEN, BLUE
        Image.fromarray(a).save(root / name, quality=95)
    return root


def views(root, size=16, **kw):
    return FolderCropViews(ImageFolder(root, "train", size), size, kw.pop("min_scale", 0.08), seed=3, **kw)


def colours(crops: torch.Tensor) -> set[str]:
    """Which of red/green/blue dominate some pixel of uint8 crops [n, 3, S, S]."""
    px = crops.permute(0, 2, 3, 1).reshape(-1, 3).int()
    found = set()
    for name, ch in (("red", 0), ("green", 1), ("blue", 2)):
        others = [c for c in range(3) if c != ch]
        if ((px[:, ch] > 200) & (px[:, others].max(dim=1).values < 60)).any():
            found.add(name)
    return found


def test_crops_reach_outside_the_centre_square_of_non_square_images(striped):
    ds = views(striped)
    seen = {i: set() for i in range(len(ds))}
    for epoch in range(12):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item, _ = ds[i]
            assert item["global"].shape == (2, 3, 16, 16) and item["global"].dtype == torch.uint8
            seen[i] |= colours(item["global"])
    for i, found in seen.items():   # every image, whatever its shape: both outer parts were shown
        assert {"red", "blue"} <= found, (ds.folder.relative_path(i), found)


def test_crops_are_a_pure_function_of_seed_epoch_and_index(striped):
    a, b = views(striped), views(striped)
    a.set_epoch(4), b.set_epoch(4)
    first = a[1][0]["global"]
    assert torch.equal(first, b[1][0]["global"])                   # another copy, same crops
    assert not torch.equal(first[0], first[1])                      # the two views differ
    b.set_epoch(5)
    assert not torch.equal(first, b[1][0]["global"])                # another epoch, new crops


def test_draft_decoding_matches_the_full_decode(tmp_path):
    """A 1600x1200 JPEG: crops decoded at a reduced DCT scale equal full-resolution crops up to
    JPEG/resampling noise."""
    y, x = np.mgrid[0:1200, 0:1600]
    a = np.stack([(x * 255 // 1600), (y * 255 // 1200), ((x + y) % 256)], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(a).save(path, quality=95)
    boxes = torch.tensor([[100, 200, 800, 900], [0, 0, 1200, 1600]])
    got = decode_crops(path, lambda h, w: [(boxes, 32)])[0]
    assert got.shape == (2, 32, 32, 3)
    with Image.open(path) as im:
        full = im.convert("RGB")
    want = np.stack([np.asarray(full.resize((32, 32), Image.Resampling.BILINEAR, box=(l, t, l + w, t + h)))
                     for t, l, h, w in boxes.tolist()])
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 3.0


def test_crop_boxes_are_drawn_against_the_full_upright_image(tmp_path):
    """The boxes see the file's full size after EXIF rotation (not a thumbnail, not the raw
    orientation), and a crop of the upper-left quarter shows that quarter of the upright photo."""
    a = np.zeros((120, 160, 3), np.uint8)        # raw: 160 wide, 120 high; left half red, right blue
    a[:, :80], a[:, 80:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6                              # "rotate 90 CW to display": upright is 120 x 160
    Image.fromarray(a).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    seen = []

    def boxes_for(height, width):
        seen.append((height, width))
        return [(torch.tensor([[0, 0, 80, 60], [80, 0, 80, 60]]), 16)]

    top, bottom = decode_crops(tmp_path / "rotated.jpg", boxes_for)[0]
    assert seen == [(160, 120)]
    assert colours(torch.from_numpy(top).permute(2, 0, 1)[None]) == {"red"}        # rotated CW: left -> top
    assert colours(torch.from_numpy(bottom).permute(2, 0, 1)[None]) == {"blue"}


def test_multi_crop_items_and_views(striped):
    ds = views(striped, local_crops=3, local_size=8, local_scale=(0.05, 0.3))
    item, _ = ds[0]
    assert item["local"].shape == (3, 3, 8, 8)
    batch = torch.utils.data.default_collate([ds[i] for i in range(3)])[0]
    aug = BYOLViews(16, local_crops=3, local_size=8)
    (v1, v2), local = aug.views(batch, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (3, 3, 16, 16) and local.shape == (9, 3, 8, 8)
    # device-side multi-crop from a fixed-size uint8 batch
    (w1, w2), local = aug.views(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert w1.shape == (4, 3, 16, 16) and local.shape == (12, 3, 8, 8)


def test_multi_crop_loss_is_eq4_without_locals_and_uses_them_otherwise():
    torch.manual_seed(0)
    online = OnlineNetwork(build_encoder("resnet18", True, {}), 512, 32, 16, 0).eval()
    target = OnlineNetwork(build_encoder("resnet18", True, {}), 512, 32, 16, 0).eval()
    tgt = lambda x: target(x)[0]   # noqa: E731 - a target network returns projections only
    x1, x2, local = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.randn(8, 3, 8, 8)
    plain, _ = byol_loss(online, tgt, x1, x2)
    empty, _ = byol_loss(online, tgt, x1, x2, local[:0])
    assert torch.allclose(plain, empty)
    with_local, _ = byol_loss(online, tgt, x1, x2, local)
    assert not torch.allclose(plain, with_local)
    assert 0.0 <= with_local.item() <= 4.0          # 2 x the mean of per-pair losses in [0, 4]
    with_local.backward()
    assert online.encoder.conv1.weight.grad is not None


def test_blur_rule_and_switch():
    assert blur_enabled(None, 32) is False and blur_enabled(None, 96) is True
    assert blur_enabled(True, 16) is True and blur_enabled(False, 224) is False
    params = BYOLViews(96, blur=False).sample_params(500, 1, torch.Generator().manual_seed(0))
    assert not params["blur"].any()                                    # view 1 is blurred always by default
    assert BYOLViews(96).sample_params(500, 1, torch.Generator().manual_seed(0))["blur"].all()
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    on, off = BYOLViews(16, blur=True), BYOLViews(16, blur=False)      # 16 px: a 1-px kernel, a no-op
    g = lambda: torch.Generator().manual_seed(1)                        # noqa: E731
    assert torch.equal(on.views(x, g())[0][0], off.views(x, g())[0][0])
    assert load_config(None, ["data_transforms.blur=false"]).data_transforms.blur is False
    assert load_config(None, []).data_transforms.blur is None


def test_tau_from_the_planned_steps():
    assert base_ema_rate(0.97, 10) == 0.97
    assert math.isclose(base_ema_rate("auto", 1000), 1 - 3 / math.sqrt(1000))
    assert base_ema_rate("auto", 10) == 0.9                              # lower bound
    assert base_ema_rate("auto", 10_000_000) == 0.996                    # the paper's value at most
    assert 0.989 < base_ema_rate("auto", 93_750) < 0.991                 # 300 ImageNet epochs: paper 0.99
    assert load_config(None, ["trainer.m=auto"]).trainer.m == "auto"
    assert load_config(None, ["trainer.m=0.9"]).trainer.m == 0.9
    with pytest.raises(ConfigError, match="trainer.m"):
        load_config(None, ["trainer.m=fast"])
    with pytest.raises(ConfigError, match="local_scale"):
        load_config(None, ["data_transforms.local_crops=2", "data_transforms.local_scale=(0.5,0.2)"])


def test_fixed_size_sources_keep_their_native_resolution(tmp_path):
    """STL-10 trains from its 96 px records whatever the view size (the device crops them); a folder
    yields crops cut from the file."""
    write_stl10_binary(tmp_path, n_train=4, n_test=2, n_unlabeled=2, seed=1)
    cfg = load_config(None, [f"data.root={tmp_path}", "data.split=train", "data.download=false",
                             "data_transforms.input_shape=(32,32,3)"])
    x, _ = build_training_dataset(cfg, seed=0)[0]
    assert x.shape == (3, 96, 96)
    (v1, _), _ = BYOLViews(32).views(x[None].repeat(2, 1, 1, 1))
    assert v1.shape == (2, 3, 32, 32)


def test_training_on_a_folder_with_multi_crop_and_auto_tau(striped, tmp_path):
    from testkit import TINY
    from byol.pretrain.loop import train
    import json
    run = tmp_path / "run"
    overrides = [a for a in TINY if not a.startswith(("data.", "trainer.batch_size", "trainer.num_workers"))]
    summary = train(load_config(None, overrides + [
        "data.name=folder", f"data.root={striped}", "data.split=train", "trainer.batch_size=2",
        "trainer.num_workers=1", "trainer.max_steps=3", "trainer.m=auto", "data_transforms.local_crops=2",
        "data_transforms.input_shape=(16,16,3)", f"trainer.run_dir={run}"]))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 3 and all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert math.isclose(rows[0]["tau"], 0.9)      # auto for 3 steps: the rule's lower bound
    assert (run / "encoder.pt").exists()
