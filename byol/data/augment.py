"""BYOL image augmentations (Grill et al. 2020, Table 6), batched on the training device.

Every random parameter is drawn *per sample* (crop box, flip, jitter factors and their order,
grayscale, blur sigma, solarize), as torchvision does image by image; drawing one set per batch
would make all images of a batch share, e.g., the same crop and colour shift, which removes most
of the variety BYOL learns from. Parameters are drawn on the CPU with an optional
`torch.Generator` (so a seed fixes them, whatever the device) and then applied to the whole batch
with a handful of tensor ops: no Python loop over samples.

Input is a uint8 batch [N, 3, H, W]: decoding and collation stay cheap and the batch moves to the
GPU at a quarter of the float32 size. Output is float32 [N, 3, size, size], normalised.

Each batched op matches `torchvision.transforms.v2.functional` on float images (see the tests).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)     # Table 6: aspect ratio range of the random crop
CROP_ATTEMPTS = 10                       # torchvision's RandomResizedCrop: 10 tries, then centre
# Table 6: blur and solarize probabilities of view 1 / view 2; "local" multi-crop views follow DINO
# (Caron et al. 2021): blur 0.5, no solarize.
BLUR_P = {1: 1.0, 2: 0.1, "local": 0.5}
SOLARIZE_P = {1: 0.0, 2: 0.2, "local": 0.0}
BLUR_AUTO_ABOVE = 32                     # blur: None turns blur on for views larger than this (below)
SIGMA_RANGE = (0.1, 2.0)                 # Table 6 / SimCLR: blur sigma ~ U[0.1, 2.0]
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")   # torchvision's fn_idx order


def blur_kernel_size(size: int) -> int:
    """SimCLR/BYOL: kernel side ~10% of the image side, odd (23 for 224, 9 for 96, 3 for 32, 1 for
    16: a 1-px kernel is the identity, so at <= 19 px blur does nothing whatever the setting)."""
    k = int(0.1 * size)
    return k + 1 if k % 2 == 0 else k


def blur_enabled(setting: bool | None, size: int) -> bool:
    """data_transforms.blur: true/false, or None = auto: off at <= 32 px, as CIFAR recipes do
    (solo-learn, lightly, SimCLR's CIFAR setup), where a 3-px kernel with sigma up to 2 turns a view
    into a box-filtered copy; on above. The measurement: docs/measurements/learning.md."""
    return (size > BLUR_AUTO_ABOVE) if setting is None else bool(setting)


def random_crop_params(n: int, scale: tuple[float, float],
                       generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Raw random-resized-crop draws for n crops: CROP_ATTEMPTS (area scale, log aspect ratio) pairs
    and a position in [0, 1)^2 each; `crop_boxes` resolves them against an image's size."""
    log_r = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))

    def uniform(lo: float, hi: float, *shape) -> Tensor:
        return torch.rand(n, *shape, generator=generator, dtype=torch.float64) * (hi - lo) + lo

    return {"crop_scale": uniform(*scale, CROP_ATTEMPTS), "crop_log_ratio": uniform(*log_r, CROP_ATTEMPTS),
            "crop_pos": uniform(0.0, 1.0, 2)}


# ---------------------------------------------------------------------------------------------
# Batched ops. x: float [N, 3, H, W] in [0, 1]; per-sample factors: float [N].
# ---------------------------------------------------------------------------------------------

def _per_sample(f: Tensor) -> Tensor:
    return f.view(-1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma with torchvision's weights: [N, 3, H, W] -> [N, 1, H, W]."""
    r, g, b = x.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    """torchvision's _blend with a per-sample ratio: x * f + other * (1 - f), clamped to [0, 1]."""
    f = _per_sample(f)
    return x.mul(f).add_(other * (1.0 - f)).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    return x.mul(_per_sample(f)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    # Blend with the mean grey level of each image (one scalar per sample).
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _gray(x), f)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma repeated on 3 channels, as RandomGrayscale(p) does for RGB input."""
    return _gray(x).expand_as(x).contiguous()


def solarize(x: Tensor) -> Tensor:
    """x -> 1 - x where x >= 0.5 (Table 6). With the threshold at 0.5 this is min(x, 1 - x),
    bit-exact, and much faster on CPU than torch.where."""
    return torch.minimum(x, 1.0 - x)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[N, 3, H, W] RGB -> h, s, v, each [N, 1, H, W], hue in [0, 1). torchvision's (Pillow's)
    formulas, with float masks instead of torch.where/aminmax, which are slow on CPU."""
    r, g, b = x.split(1, dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    span = maxc - torch.minimum(torch.minimum(r, g), b)
    tiny = torch.finfo(x.dtype).tiny                 # grey pixels: span = 0, so s = h = 0
    s = span / maxc.clamp_min(tiny)
    is_r = maxc == r                                 # ties resolved r, then g, then b
    is_g = (maxc == g) & ~is_r
    is_b = ~(is_r | is_g)
    h = ((g - b).mul_(is_r)                                   # max is r: (g - b) / span
         + (b - r).add_(span, alpha=2.0).mul_(is_g)           # max is g: 2 + (b - r) / span
         + (r - g).add_(span, alpha=4.0).mul_(is_b))          # max is b: 4 + (r - g) / span
    h = h.div_(span.clamp_min(tiny)).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return h, s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """h, s, v [N, 1, H, W] -> RGB [N, 3, H, W] in closed form: c_n = v (1 - s t(k)),
    k = 6h + n for n = 5, 3, 1 (r, g, b), t(k) = clamp(min(k, 4 - k), 0, 1) with period 6.
    As h is in [0, 1], k is in [1, 11], where t is the sum of two ramps: no mod, gather or masks."""
    n = torch.tensor([5.0, 3.0, 1.0], device=h.device, dtype=h.dtype).view(1, 3, 1, 1)
    k = h * 6.0 + n
    t = (4.0 - k).clamp_(0.0, 1.0) + torch.minimum(k - 6.0, 10.0 - k).clamp_(0.0, 1.0)
    return v - (v * s) * t


def adjust_hue(x: Tensor, f: Tensor) -> Tensor:
    """Rotate the hue of each image by its own f in [-0.5, 0.5] (fraction of a full turn)."""
    h, s, v = _rgb_to_hsv(x)
    h = h.add_(_per_sample(f)).remainder_(1.0)
    return _hsv_to_rgb(h, s, v).clamp_(0.0, 1.0)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur, a different sigma per sample, reflect padding.

    All samples and channels go through one grouped (depthwise) conv per direction: the batch is
    folded into channels [1, N*3, H, W] with one 1-D kernel per (sample, channel). channels_last
    makes oneDNN use its fast depthwise path on CPU (~15x faster than the default layout here).
    """
    n, c, hgt, wid = x.shape
    half = kernel_size // 2
    t = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - half
    k1d = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)                   # [N, k]
    k1d = (k1d / k1d.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*3, k]
    y = F.pad(x.reshape(1, n * c, hgt, wid), (half, half, half, half), mode="reflect")
    y = y.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(y, k1d.view(n * c, 1, kernel_size, 1), groups=n * c)      # vertical
    y = F.conv2d(y, k1d.view(n * c, 1, 1, kernel_size), groups=n * c)      # horizontal
    return y.reshape(n, c, hgt, wid).contiguous()


def hflip(x: Tensor) -> Tensor:
    return x.flip(-1)


def resized_crop(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop boxes (top, left, h, w) int [N, 4] of x [N, C, H, W] and resize each to size x size,
    bilinear, in one roi_align call. aligned=True puts the samples at the pixel centres
    of F.interpolate(align_corners=False); when a crop is shrunk, the adaptive sampling ratio
    averages ceil(crop/size)^2 points per output pixel, an approximate antialias."""
    top, left, h, w = boxes.to(device=x.device, dtype=x.dtype).unbind(1)
    idx = torch.arange(x.shape[0], device=x.device, dtype=x.dtype)
    rois = torch.stack((idx, left, top, left + w, top + h), dim=1)           # [N, 5]
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True)


def crop_boxes(params: dict[str, Tensor], height: int, width: int) -> Tensor:
    """torchvision's RandomResizedCrop.get_params, vectorised over samples, for an image of
    height x width: the first of the CROP_ATTEMPTS (scale, ratio) draws whose box fits, else the
    central crop clipped to CROP_RATIO. Returns int64 [N, 4] (top, left, h, w).

    In numpy on the CPU (the draws live there): a DataLoader worker calls this once per image, where
    a dozen tiny torch ops would cost ~0.4 ms an image, numpy ~0.03 ms."""
    scale = np.asarray(params["crop_scale"], np.float64)                # [N, 10]
    target = height * width * scale
    ratio = np.exp(np.asarray(params["crop_log_ratio"], np.float64))
    w = np.round(np.sqrt(target * ratio))                               # half to even = round()
    h = np.round(np.sqrt(target / ratio))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    found = fits.any(axis=1)
    first = np.where(found, fits.argmax(axis=1), 0)[:, None]
    h, w = np.take_along_axis(h, first, 1)[:, 0], np.take_along_axis(w, first, 1)[:, 0]

    # Fallback: the whole image, or its centre with the nearest allowed aspect ratio.
    fh, fw = height, width
    if width / height < CROP_RATIO[0]:
        fh = int(round(width / CROP_RATIO[0]))
    elif width / height > CROP_RATIO[1]:
        fw = int(round(height * CROP_RATIO[1]))
    h = np.where(found, h, float(fh))
    w = np.where(found, w, float(fw))
    u = np.asarray(params["crop_pos"], np.float64)                      # [N, 2] in [0, 1)
    top = np.where(found, np.floor(u[:, 0] * (height - h + 1)), np.floor((height - h) / 2))
    left = np.where(found, np.floor(u[:, 1] * (width - w + 1)), np.floor((width - w) / 2))
    return torch.from_numpy(np.stack((top, left, h, w), axis=1).astype(np.int64))


def _on_subset(x: Tensor, mask: Tensor, fn, *per_sample: Tensor) -> Tensor:
    """x[mask] = fn(x[mask], *(a[mask] for a in per_sample)); mask: bool [N] on the CPU.
    Works on the selected rows only, so an op with p = 0.1 costs ~10% of the batch."""
    idx = mask.cpu().nonzero().flatten()
    if idx.numel() == 0:
        return x
    args = [a.cpu()[idx].to(x.device, non_blocking=True) for a in per_sample]
    if idx.numel() == x.shape[0]:
        return fn(x, *args)
    idx = idx.to(x.device)
    return x.index_copy_(0, idx, fn(x.index_select(0, idx), *args))


_JITTER_FNS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: Tensor, params: dict[str, Tensor]) -> Tensor:
    """ColorJitter with p = params["jitter"], each sample in its own order params["jitter_order"]
    [N, 4] (a permutation of JITTER_OPS indices): slot by slot, each op runs on the samples that
    put it in that slot."""
    order = params["jitter_order"].cpu()
    for slot in range(len(JITTER_OPS)):
        for op, (name, fn) in enumerate(zip(JITTER_OPS, _JITTER_FNS)):
            mask = params["jitter"].cpu() & (order[:, slot] == op)
            x = _on_subset(x, mask, fn, params[name])
    return x


def normalize(x: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _to_float(images_u8: Tensor) -> Tensor:
    if images_u8.dtype != torch.uint8 or images_u8.ndim != 4 or images_u8.shape[1] != 3:
        raise ValueError(f"expected a uint8 batch [N, 3, H, W], got {images_u8.dtype} "
                         f"{tuple(images_u8.shape)}")
    return images_u8.float().div_(255.0)


class BYOLViews(torch.nn.Module):
    """BYOL's two views (Table 6), plus optional multi-crop local views, batched on the device.

    Input is either a uint8 batch [N, 3, H, W] at the source's native resolution (crops are cut
    here, per sample, from the whole image) or a dict of crops already cut in the DataLoader
    workers from the decoded originals (byol/data/crops.py): {"global": uint8 [N, 2, 3, S, S],
    "local": uint8 [N, K, 3, s, s]}. Either way the photometric ops run here, per sample.

    s scales the colour-jitter strengths (SimCLR's colour strength, 1.0 in BYOL); `blur`: see
    `blur_enabled`. `local_crops` K > 0 adds K views of `local_size` px cut at `local_scale`
    (SwAV/DINO multi-crop); they go through the online network only (pretrain/model.py)."""

    def __init__(self, size: int, s: float = 1.0, min_scale: float = 0.08,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, blur: bool | None = None,
                 local_crops: int = 0, local_size: int = 0, local_scale: tuple[float, float] = (0.05, 0.3)):
        super().__init__()
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.size, self.s, self.min_scale = int(size), float(s), float(min_scale)
        self.mean, self.std = tuple(mean), tuple(std)
        self.blur = blur_enabled(blur, self.size)
        self.kernel_size = blur_kernel_size(self.size)
        self.local_crops, self.local_size = int(local_crops), int(local_size or default_local_size(size))
        self.local_scale = (float(local_scale[0]), float(local_scale[1]))
        # Table 6 strengths; ranges as torchvision's ColorJitter: [max(0, 1 - a), 1 + a], [-h, h].
        self.ranges = {
            "brightness": (max(0.0, 1 - 0.4 * s), 1 + 0.4 * s),
            "contrast": (max(0.0, 1 - 0.4 * s), 1 + 0.4 * s),
            "saturation": (max(0.0, 1 - 0.2 * s), 1 + 0.2 * s),
            "hue": (-min(0.5, 0.1 * s), min(0.5, 0.1 * s)),
        }

    def extra_repr(self) -> str:
        local = f", local_crops={self.local_crops}x{self.local_size}px" if self.local_crops else ""
        return (f"size={self.size}, s={self.s}, min_scale={self.min_scale}, "
                f"blur={'kernel %d' % self.kernel_size if self.blur else 'off'}{local}")

    def crop_scale(self, view) -> tuple[float, float]:
        return self.local_scale if view == "local" else (self.min_scale, 1.0)

    def sample_params(self, n: int, view,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-sample parameters of view 1, 2 or "local", all CPU tensors with leading dim n.

        The crop is stored as raw draws (`random_crop_params`) and resolved against the image size
        by `crop_boxes` in `apply`."""
        if view not in (1, 2, "local"):
            raise ValueError(f"view must be 1, 2 or 'local', got {view}")

        def uniform(lo: float, hi: float) -> Tensor:
            return torch.rand(n, generator=generator) * (hi - lo) + lo

        def bernoulli(p: float) -> Tensor:
            return torch.rand(n, generator=generator) < p      # p = 1 -> always, p = 0 -> never

        p = random_crop_params(n, self.crop_scale(view), generator)
        p.update({
            "flip": bernoulli(0.5),
            "jitter": bernoulli(0.8),
            # A uniformly random permutation per sample: argsort of iid uniforms.
            "jitter_order": torch.rand(n, len(JITTER_OPS), generator=generator).argsort(dim=1),
        })
        for name in JITTER_OPS:
            p[name] = uniform(*self.ranges[name])
        p["grayscale"] = bernoulli(0.2)
        p["blur"] = bernoulli(BLUR_P[view] if self.blur else 0.0)
        p["sigma"] = uniform(*SIGMA_RANGE)
        p["solarize"] = bernoulli(SOLARIZE_P[view])
        return p

    def photometric(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Everything after the crop, in Table 6's order, on float [N, 3, size, size] in [0, 1]."""
        x = _on_subset(x, params["flip"], hflip)
        x = color_jitter(x, params)
        x = _on_subset(x, params["grayscale"], rgb_to_grayscale)
        kernel = blur_kernel_size(x.shape[-1])
        if kernel > 1:   # a 1-px kernel is the identity: skip the work
            x = _on_subset(x, params["blur"], lambda v, sigma: gaussian_blur(v, sigma, kernel), params["sigma"])
        return _on_subset(x, params["solarize"], solarize)

    def apply(self, images_u8: Tensor, params: dict[str, Tensor], size: int | None = None,
              crop: bool = True) -> Tensor:
        """uint8 [N, 3, H, W] (any device) -> float32 [N, 3, size, size], normalised. crop=False:
        the images are already size x size crops (cut in the workers)."""
        size = self.size if size is None else size
        x = _to_float(images_u8)
        if not crop:
            if x.shape[-2:] != (size, size):
                raise ValueError(f"pre-cut crops must be {size}x{size}, got {tuple(x.shape)}")
        else:
            x = resized_crop(x, crop_boxes(params, x.shape[2], x.shape[3]), size)
        return normalize(self.photometric(x, params), self.mean, self.std)

    def views(self, batch: Tensor | dict[str, Tensor],
              generator: torch.Generator | None = None) -> tuple[list[Tensor], Tensor | None]:
        """A training batch -> ([view 1, view 2] each float [N, 3, S, S], local views float
        [K*N, 3, s, s] ordered crop-major (crop k of sample i at row k*N + i), or None)."""
        if isinstance(batch, dict):
            globals_u8, locals_u8 = batch["global"], batch.get("local")
            n = globals_u8.shape[0]
            sources = [globals_u8[:, 0], globals_u8[:, 1]]
            local_source = None if locals_u8 is None or locals_u8.shape[1] == 0 else \
                locals_u8.transpose(0, 1).reshape(-1, *locals_u8.shape[2:])
        else:
            n = batch.shape[0]
            sources = [batch, batch]
            local_source = batch.repeat(self.local_crops, 1, 1, 1) if self.local_crops else None
        crop = not isinstance(batch, dict)
        out = [self.apply(source, self.sample_params(n, view, generator), crop=crop)
               for view, source in zip((1, 2), sources)]
        local = None
        if local_source is not None:
            p = self.sample_params(local_source.shape[0], "local", generator)
            local = self.apply(local_source, p, self.local_size, crop=crop)
        return out, local

    def forward(self, images_u8: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """uint8 [N, 3, H, W] -> (view 1, view 2), each float [N, 3, size, size]."""
        n = images_u8.shape[0]
        p1 = self.sample_params(n, 1, generator)
        p2 = self.sample_params(n, 2, generator)
        return self.apply(images_u8, p1), self.apply(images_u8, p2)


def default_local_size(size: int) -> int:
    """DINO's 96 px local views for 224 px global ones (3/7), at least 8 px."""
    return max(8, int(round(size * 3 / 7)))


def eval_transform(images_u8: Tensor, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """Deterministic: uint8 [N, 3, H, W] -> float32 [N, 3, size, size], normalised. If H, W != size:
    resize the shorter side to size (bilinear, antialias) and centre-crop, as torchvision's
    Resize(size) + CenterCrop(size)."""
    x = _to_float(images_u8)
    hgt, wid = x.shape[2:]
    if (hgt, wid) != (size, size):
        if hgt <= wid:
            new_h, new_w = size, int(size * wid / hgt)
        else:
            new_h, new_w = int(size * hgt / wid), size
        if (new_h, new_w) != (hgt, wid):
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=True).clamp_(0.0, 1.0)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        x = x[:, :, top:top + size, left:left + size].contiguous()
    return normalize(x, mean, std)
