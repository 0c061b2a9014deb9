"""The small-input convolution path (byol/pretrain/small_input_conv.py) is exact: same outputs and
gradients as nn.Conv2d where it applies, a plain convolution where it does not, same state dict."""
import pytest
import torch
import torch.nn as nn
import torchvision

from byol.pretrain.small_input_conv import SmallInputConv2d, use_small_input_path


def twins(cin, cout, k, stride, pad, bias):
    torch.manual_seed(0)
    plain = nn.Conv2d(cin, cout, k, stride, pad, bias=bias)
    fast = nn.Conv2d(cin, cout, k, stride, pad, bias=bias)
    fast.load_state_dict(plain.state_dict())
    assert use_small_input_path(fast) == 1 and type(fast) is SmallInputConv2d
    return plain, fast


@pytest.mark.parametrize("k, stride, pad, side, fast_path", [
    (3, 1, 1, 1, True),     # layer4's 3x3 convs on a 1x1 input: the centre tap only
    (3, 2, 1, 2, True),     # layer4's first conv: a 2x2 input, stride 2 -> 1x1 from 4 taps
    (3, 1, 1, 2, False),    # a 2x2 output: a real convolution
    (1, 2, 0, 2, False),    # the 1x1 stride-2 downsample: input outside the window, a plain conv
    (7, 2, 3, 4, False),    # the stem on a 4 px input: 2x2 output
])
def test_outputs_and_gradients_equal_a_plain_convolution(k, stride, pad, side, fast_path, monkeypatch):
    plain, fast = twins(8, 6, k, stride, pad, bias=True)
    calls = []
    monkeypatch.setattr(nn.Conv2d, "_conv_forward",
                        lambda self, x, w, b, orig=nn.Conv2d._conv_forward: calls.append(self) or orig(self, x, w, b))
    x = torch.randn(5, 8, side, side)
    xp, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yp, yf = plain(xp), fast(xf)
    assert yf.shape == yp.shape
    torch.testing.assert_close(yf, yp, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(yp)
    yp.backward(g)
    yf.backward(g)
    torch.testing.assert_close(xf.grad, xp.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.bias.grad, plain.bias.grad, rtol=1e-5, atol=1e-5)
    assert (fast in calls) != fast_path        # the fast path never calls the convolution


def test_a_resnet_keeps_its_results_and_state_dict_at_32_px():
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10)
    fast = torchvision.models.resnet18(num_classes=10)
    fast.load_state_dict(plain.state_dict())
    assert use_small_input_path(fast) == 20            # every conv of a ResNet-18 (stem, 16 in blocks, 3 downsamples)
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)    # train mode: batch statistics
    fast.eval(), plain.eval()
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)
    torchvision.models.resnet18(num_classes=10).load_state_dict(fast.state_dict())   # plain torchvision loads it
