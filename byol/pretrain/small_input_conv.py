"""Convolutions whose whole input fits inside one kernel window, computed as the matrix product they are.

A ResNet with the standard stem reduces a 32 px view to 1x1 by layer4 (32 -> 16 -> 8 -> 4 -> 2 -> 1).
There a 3x3 convolution with padding 1 only ever multiplies its centre tap with the input, and
layer4's first (stride-2) conv on a 2x2 input uses 4 taps: each output is one linear map of the
flattened input. oneDNN still runs them as convolutions, and its backward pass is slow on such
shapes: on a 2-core AVX2 CPU, the three 1x1-input 3x3 convs of layer4 took 1.9 s of a 4.5 s BYOL
step (batch 256, fp32), about 10x the time of the same product as a matrix multiply.

`use_small_input_path(module)` switches every eligible `nn.Conv2d` to `SmallInputConv2d`, which
checks the input's size at each call and takes the exact matrix-product path only when the output is
1x1 and every input pixel lies inside the kernel window; otherwise it is a plain Conv2d. Parameters,
state-dict keys and results (up to float rounding) are unchanged, so `encoder.pt` still loads into a
plain torchvision ResNet; the off-window taps get the zero gradient a convolution would give them.
Measured on that CPU (benchmarks/train_throughput.py rows in docs/measurements/performance.md): 56 -> 103 img/s at 32 px.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallInputConv2d(nn.Conv2d):
    """nn.Conv2d (groups 1, dilation 1, zero padding) with the matrix-product path described above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        (kh, kw), (ph, pw), (sh, sw) = self.kernel_size, self.padding, self.stride
        one_output = (h + 2 * ph - kh) // sh == 0 and (w + 2 * pw - kw) // sw == 0
        if not (one_output and h + ph <= kh and w + pw <= kw):
            return super().forward(x)
        # output[n, o] = sum_{c,i,j} W[o, c, ph + i, pw + j] x[n, c, i, j]: the window starts at -padding
        weight = self.weight[:, :, ph:ph + h, pw:pw + w].reshape(self.out_channels, -1)   # [O, C*h*w]
        y = F.linear(x.reshape(x.shape[0], -1), weight, self.bias)                           # [N, O]
        return y[:, :, None, None]                                                          # [N, O, 1, 1]


def use_small_input_path(module: nn.Module) -> int:
    """Switch eligible Conv2d layers of `module` (in place) to SmallInputConv2d; returns how many."""
    switched = 0
    for conv in module.modules():
        if type(conv) is nn.Conv2d and conv.groups == 1 and conv.dilation == (1, 1) \
                and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple):
            conv.__class__ = SmallInputConv2d
            switched += 1
    return switched
