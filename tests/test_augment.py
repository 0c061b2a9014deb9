"""Tests for byol/augment.py: shapes, determinism, per-sample randomness, Table 6 frequencies, and
each batched op against torchvision.transforms.v2.functional applied image by image."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from byol.data.augment import IMAGENET_MEAN, IMAGENET_STD, JITTER_OPS, BYOLViews, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, blur_kernel_size, crop_boxes, eval_transform, gaussian_blur, hflip, resized_crop, rgb_to_grayscale, solarize


def smooth_images(n, h, w, seed=0, low=6):
    """Float [n, 3, h, w] in [0, 1] with image-like low-frequency content, plus flat grey and
    saturated patches (the edge cases of HSV and clamping)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, low, low, generator=g), size=(h, w), mode="bicubic",
                      align_corners=False).clamp(0, 1)
    x[:, :, :3, :3] = 0.5                   # grey
    x[:, 0, -3:, -3:] = 1.0                 # saturated red
    x[:, 1:, -3:, -3:] = 0.0
    return x


def to_u8(x):
    return (x * 255).round().to(torch.uint8)


def norm_bounds():
    m, s = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (0 - m) / s, (1 - m) / s


# --------------------------------------------------------------------------------- end to end

def test_shapes_dtypes_and_range():
    aug = BYOLViews(32)
    x = to_u8(smooth_images(8, 40, 52))
    v1, v2 = aug(x, torch.Generator().manual_seed(0))
    lo, hi = norm_bounds()
    for v in (v1, v2):
        assert v.shape == (8, 3, 32, 32) and v.dtype == torch.float32
        assert torch.isfinite(v).all()
        assert (v >= lo - 1e-5).all() and (v <= hi + 1e-5).all()
    with pytest.raises(ValueError):
        aug(x.float())


def test_deterministic_given_seed():
    aug = BYOLViews(24)
    x = to_u8(smooth_images(6, 30, 30))
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], c[0]) and not torch.allclose(a[1], c[1])


def test_parameters_and_outputs_differ_per_sample():
    """64 copies of one image must give 64 different views: one parameter set per batch fails."""
    aug = BYOLViews(32)
    x = to_u8(smooth_images(1, 48, 48)).expand(64, -1, -1, -1).contiguous()
    v1, v2 = aug(x, torch.Generator().manual_seed(0))
    for v in (v1, v2):
        d = torch.cdist(v.flatten(1), v.flatten(1))
        assert d[~torch.eye(64, dtype=torch.bool)].min() > 1e-3
    assert (v1 - v2).flatten(1).abs().amax(dim=1).min() > 1e-3        # view 1 != view 2 per sample
    p = aug.sample_params(64, 1, torch.Generator().manual_seed(0))
    assert len({tuple(b) for b in crop_boxes(p, 48, 48).tolist()}) > 50
    assert p["brightness"].unique().numel() == 64 and p["sigma"].unique().numel() == 64


# ------------------------------------------------------------------------------- parameters

def binomial_ok(mask, p, n_sigma=5.0):
    n = mask.numel()
    return abs(mask.float().mean().item() - p) <= n_sigma * math.sqrt(p * (1 - p) / n) + 1e-12


def test_table6_probabilities():
    n = 20_000
    aug = BYOLViews(96)
    g = torch.Generator().manual_seed(0)
    p1, p2 = aug.sample_params(n, 1, g), aug.sample_params(n, 2, g)
    for p in (p1, p2):
        assert binomial_ok(p["flip"], 0.5)
        assert binomial_ok(p["jitter"], 0.8)
        assert binomial_ok(p["grayscale"], 0.2)
    assert p1["blur"].all()                    # view 1: blur with p = 1.0 exactly
    assert not p1["solarize"].any()            # view 1: solarize with p = 0.0 exactly
    assert binomial_ok(p2["blur"], 0.1)
    assert binomial_ok(p2["solarize"], 0.2)
    assert not torch.equal(p1["flip"], p2["flip"])


def test_jitter_factor_ranges_and_order():
    n = 20_000
    p = BYOLViews(96, s=1.0).sample_params(n, 2, torch.Generator().manual_seed(1))
    ranges = {"brightness": (0.6, 1.4), "contrast": (0.6, 1.4), "saturation": (0.8, 1.2),
              "hue": (-0.1, 0.1), "sigma": (0.1, 2.0)}
    for name, (lo, hi) in ranges.items():
        v = p[name]
        assert v.min() >= lo and v.max() <= hi, name
        assert v.min() < lo + 0.01 * (hi - lo) and v.max() > hi - 0.01 * (hi - lo), name
        assert abs(v.mean().item() - (lo + hi) / 2) < 0.02 * (hi - lo), name
    order = p["jitter_order"]
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(n, 4))   # permutations
    for slot in range(4):
        for op in range(4):
            assert binomial_ok(order[:, slot] == op, 0.25)
    half = BYOLViews(96, s=0.5).sample_params(1000, 1, torch.Generator().manual_seed(1))
    assert half["brightness"].min() >= 0.8 and half["hue"].abs().max() <= 0.05


def test_crop_scale_and_ratio_ranges():
    aug = BYOLViews(96, min_scale=0.08)
    p = aug.sample_params(20_000, 1, torch.Generator().manual_seed(2))
    assert p["crop_scale"].min() >= 0.08 and p["crop_scale"].max() <= 1.0
    ratio = p["crop_log_ratio"].exp()
    assert ratio.min() >= 0.75 - 1e-9 and ratio.max() <= 4 / 3 + 1e-9
    # Resolved on a large square image (rounding negligible; the fallback, whole image, is rare).
    top, left, h, w = crop_boxes(p, 500, 500).double().unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 500).all() and (left + w <= 500).all()
    area = h * w / 500 ** 2
    assert area.min() >= 0.08 * 0.98 and area.max() <= 1.0
    r = w / h
    is_fallback = (h == 500) & (w == 500)
    assert (r[~is_fallback] >= 0.75 * 0.99).all() and (r[~is_fallback] <= 4 / 3 * 1.01).all()
    small = crop_boxes(BYOLViews(96, min_scale=0.5).sample_params(2000, 1), 500, 500)
    assert (small[:, 2] * small[:, 3]).min() >= 0.5 * 500 ** 2 * 0.98


def test_crop_fallback_is_torchvision_centre_crop():
    p = BYOLViews(96).sample_params(100, 1, torch.Generator().manual_seed(3))
    # 10 x 1000: no (scale, ratio) draw fits, so torchvision crops the centre at ratio 4/3.
    assert (crop_boxes(p, 10, 1000) == torch.tensor([0, (1000 - 13) // 2, 10, 13])).all()
    assert (crop_boxes(p, 1000, 10) == torch.tensor([(1000 - 13) // 2, 0, 13, 10])).all()


@pytest.mark.parametrize("height,width", [(96, 96), (40, 130)])
def test_crop_distribution_matches_torchvision(height, width):
    """Same statistics of the boxes as torchvision's RandomResizedCrop, drawn image by image."""
    n = 4000
    ours = crop_boxes(BYOLViews(96).sample_params(n, 1, torch.Generator().manual_seed(4)), height, width)
    torch.manual_seed(4)
    rrc, img = T.RandomResizedCrop(96), torch.zeros(3, height, width)
    tv = torch.tensor([[d["top"], d["left"], d["height"], d["width"]]
                       for d in (rrc.make_params([img]) for _ in range(n))])

    def stats(b):
        b = b.double()
        top, left, h, w = b.unbind(1)
        return torch.stack((h * w / (height * width), (w / h).log(), (top + h / 2) / height,
                            (left + w / 2) / width), dim=1)

    a, t = stats(ours), stats(tv)
    se = torch.sqrt(a.var(0) / n + t.var(0) / n)
    assert ((a.mean(0) - t.mean(0)).abs() <= 5 * se + 1e-9).all(), (a.mean(0), t.mean(0))
    assert ((a.std(0) - t.std(0)).abs() <= 0.1 * t.std(0) + 1e-9).all(), (a.std(0), t.std(0))


# ------------------------------------------------------------------- ops against torchvision

def per_image(fn, x, *args):
    return torch.stack([fn(x[i], *(a[i].item() for a in args)) for i in range(x.shape[0])])


@pytest.mark.parametrize("ours,theirs,lo,hi", [
    (adjust_brightness, TF.adjust_brightness, 0.2, 1.8),
    (adjust_contrast, TF.adjust_contrast, 0.2, 1.8),
    (adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
    (adjust_hue, TF.adjust_hue, -0.5, 0.5),
])
def test_color_ops_match_torchvision(ours, theirs, lo, hi):
    x = smooth_images(8, 20, 24, seed=5)
    f = torch.linspace(lo, hi, 8)
    atol = 1e-5 if ours is adjust_hue else 2e-6        # hue: an RGB -> HSV -> RGB round trip
    assert torch.allclose(ours(x.clone(), f), per_image(theirs, x, f), atol=atol)


def test_grayscale_solarize_flip_match_torchvision():
    x = smooth_images(4, 20, 24, seed=6)
    assert torch.allclose(rgb_to_grayscale(x), TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-7)
    x[0, 0, 5, 5] = 0.5                       # the threshold itself is solarized
    assert torch.equal(solarize(x), TF.solarize(x, 0.5))
    assert torch.equal(hflip(x), TF.horizontal_flip(x))


def test_blur_matches_torchvision():
    x = smooth_images(5, 24, 28, seed=7)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0])
    k = blur_kernel_size(96)
    ref = torch.stack([TF.gaussian_blur(x[i], [k, k], [s, s]) for i, s in enumerate(sigma.tolist())])
    assert torch.allclose(gaussian_blur(x, sigma, k), ref, atol=1e-5)
    assert (blur_kernel_size(224), blur_kernel_size(96), blur_kernel_size(32)) == (23, 9, 3)


def test_resized_crop_matches_torchvision():
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(8))
    up = torch.tensor([[3, 5, 20, 17], [10, 2, 30, 25], [0, 20, 13, 20]])       # all upscaled to 32
    ref = torch.stack([TF.resized_crop(x[i], *b, [32, 32], antialias=True)
                       for i, b in enumerate(up.tolist())])
    # Bilinear, identical except on the outer ring, where roi_align also sees the pixels just
    # outside the box while crop-then-resize clamps to the box edge.
    assert torch.allclose(resized_crop(x, up, 32)[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5)
    assert torch.equal(resized_crop(x, torch.tensor([[0, 0, 40, 40]] * 3), 40), x)   # identity
    # Downscaling: roi_align's adaptive sampling approximates torchvision's antialias filter.
    big = smooth_images(3, 200, 200, seed=9)
    down = torch.tensor([[3, 5, 150, 120], [0, 0, 200, 200], [10, 2, 100, 125]])
    ref = torch.stack([TF.resized_crop(big[i], *b, [32, 32], antialias=True)
                       for i, b in enumerate(down.tolist())])
    d = (resized_crop(big, down, 32) - ref).abs()
    assert d.mean() < 5e-3 and d.max() < 0.1          # the max: at the sharp corner patches


def reference_view(img, p, i, kernel_size):
    """torchvision, one image: the same pipeline and parameters as BYOLViews.photometric."""
    if p["flip"][i]:
        img = TF.horizontal_flip(img)
    if p["jitter"][i]:
        fns = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
               "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}
        for op in p["jitter_order"][i].tolist():
            img = fns[JITTER_OPS[op]](img, p[JITTER_OPS[op]][i].item())
    if p["grayscale"][i]:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if p["blur"][i]:
        s = p["sigma"][i].item()
        img = TF.gaussian_blur(img, [kernel_size, kernel_size], [s, s])
    if p["solarize"][i]:
        img = TF.solarize(img, 0.5)
    return TF.normalize(img, list(IMAGENET_MEAN), list(IMAGENET_STD))


def test_apply_matches_torchvision_pipeline_per_sample():
    """The whole view, each sample with its own parameters and jitter order, equals torchvision
    run image by image (crop fixed to the full image here; the crop is tested above)."""
    n, size = 24, 28
    aug = BYOLViews(size)
    x = to_u8(smooth_images(n, size, size, seed=10))
    p = aug.sample_params(n, 2, torch.Generator().manual_seed(11))
    i = torch.arange(n)
    p.update(flip=i % 2 == 0, jitter=i % 5 != 0, grayscale=i % 3 == 0, blur=i % 2 == 1, solarize=i % 4 < 2)
    p["crop_scale"][:] = 1.0
    p["crop_log_ratio"][:] = 0.0
    ref = torch.stack([reference_view(x[k].float() / 255, p, k, aug.kernel_size) for k in range(n)])
    assert torch.allclose(aug.apply(x, p), ref, atol=1e-4)
    # With the sampled crops: resized_crop vs torchvision's crop + antialiased resize differ
    # slightly, so only a loose end-to-end check.
    p2 = aug.sample_params(n, 2, torch.Generator().manual_seed(11))
    boxes = crop_boxes(p2, size, size).tolist()
    crops = [TF.resized_crop(x[k].float() / 255, *boxes[k], [size, size], antialias=True)
             for k in range(n)]
    ref = torch.stack([reference_view(crops[k], p2, k, aug.kernel_size) for k in range(n)])
    assert (aug.apply(x, p2) - ref).abs().mean() < 0.02


def test_eval_transform_resize_and_centre_crop():
    x = to_u8(smooth_images(4, 50, 70, seed=12))
    out = eval_transform(x, 32)
    ref = TF.normalize(TF.center_crop(TF.resize(x.float() / 255, 32, antialias=True), [32, 32]),
                       list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.equal(out, eval_transform(x, 32))
    tall = to_u8(smooth_images(2, 90, 40, seed=13))
    ref = TF.center_crop(TF.resize(tall.float() / 255, 32, antialias=True), [32, 32])
    assert torch.allclose(eval_transform(tall, 32, mean=(0, 0, 0), std=(1, 1, 1)), ref, atol=1e-5)
    same = to_u8(smooth_images(2, 32, 32, seed=14))
    assert torch.allclose(eval_transform(same, 32, mean=(0, 0, 0), std=(1, 1, 1)), same.float() / 255)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    aug = BYOLViews(32)
    x = to_u8(smooth_images(16, 40, 40, seed=15))
    for view in (1, 2):
        p = aug.sample_params(16, view, torch.Generator().manual_seed(16))
        out = aug.apply(x.cuda(), p)
        assert out.is_cuda
        assert torch.allclose(out.cpu(), aug.apply(x, p), atol=1e-4)
    assert eval_transform(x.cuda(), 32).is_cuda
