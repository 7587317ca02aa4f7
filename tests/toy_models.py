"""Small documented models for the analysis, equivalence, plan and error tests.

Each class exercises one coupling case of the op rule table; its docstring
says which and what the pruning groups are. ``TOY_MODELS`` maps a name to a
``(factory, example_input_shape)`` pair; every factory is seeded, so two calls
build identical models.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TOY_MODELS",
    "ConcatChannels",
    "ConcatHeight",
    "CumsumBarrier",
    "Depthwise",
    "FlattenLinear",
    "FunctionalBNAct",
    "FunctionalLayers",
    "FunctionalTokens",
    "InPlaceNet",
    "StdConv",
    "GroupedConv",
    "MHANet",
    "PixelShuffleNet",
    "QKVAttention",
    "QKVAttentionNet",
    "ResidualAdd",
    "SEBlock",
    "ShuffleModule",
    "ShuffleView",
    "SplitChunk",
    "TensorSplitNet",
    "SliceWrite",
    "Untraceable",
    "WrappedBarrier",
    "build",
    "example_input",
    "randomize_norms",
]


class ResidualAdd(nn.Module):
    """Residual add: the stem's channels and the block's second conv are one group.

    groups: conv1.weight:0 (8: stem out = conv3 out = fc in),
    conv2.weight:0 (6: the block's inner width).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv3, self.bn3 = nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(x)))
        y = torch.relu(self.bn3(self.conv3(y)) + x)
        return self.fc(y.mean((2, 3)))


class ConcatChannels(nn.Module):
    """torch.cat on dim 1: each branch's channels sit at an offset in the consumer's input.

    groups: conv_a.weight:0 (10 units: units 0-3 are conv_a's channels, units 4-9
    conv_b's; the consumer conv_c reads them at offsets 0 and 4), conv_c.weight:0 (5).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 6, 1)
        self.conv_c = nn.Conv2d(10, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.conv_a(x)), torch.relu(self.conv_b(x))], dim=1)
        y = torch.relu(self.conv_c(y))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class ConcatHeight(nn.Module):
    """torch.cat on dim 2 (height): the branches' *channels* are identified, index by index.

    groups: conv_a.weight:0 (6: conv_a, conv_b out channel i and conv_c in channel i
    are one unit), conv_c.weight:0 (4).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 6, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 6, 3, padding=1)
        self.conv_c = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.conv_a(x)), torch.tanh(self.conv_b(x))], dim=2)
        y = torch.relu(self.conv_c(y))
        return self.fc(y.mean((2, 3)))


class SplitChunk(nn.Module):
    """split on dim 1, chunk on dim 1 and a cat back: pieces are offset slices of a producer.

    groups: conv1.weight:0 (8: channels 0-3 feed conv_a, 4-7 feed conv_b),
    conv_b.weight:0 (5: the gated halves g = [0, 5) and h = [5, 10) of conv_b are
    multiplied, so unit i is conv_b channels i and 5+i), conv_a.weight:0 (7: conv_a's
    3 and conv_c's 4 channels, concatenated into fc).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(4, 3, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 10, 1)
        self.conv_c = nn.Conv2d(5, 4, 3, padding=1)
        self.fc = nn.Linear(3 + 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        a, b = torch.split(y, [4, 4], dim=1)
        a = torch.relu(self.conv_a(a))
        g, h = self.conv_b(b).chunk(2, dim=1)  # gated halves: g * sigmoid(h)
        b = torch.relu(self.conv_c(g * torch.sigmoid(h)))
        return self.fc(torch.cat([a, b], dim=1).mean((2, 3)))


class Depthwise(nn.Module):
    """Depthwise conv with channel multiplier 2: input channel c owns outputs 2c and 2c+1.

    groups: conv1.weight:0 (8: conv1/bn1 channel c, depthwise rows 2c..2c+1, bn2
    entries 2c..2c+1, pointwise columns 2c..2c+1), pw.weight:0 (6).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(16)
        self.pw, self.bn3 = nn.Conv2d(16, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.conv1(x)))
        x = F.relu6(self.bn2(self.dw(x)))
        x = F.relu6(self.bn3(self.pw(x)))
        return self.fc(x.mean((2, 3)))


class GroupedConv(nn.Module):
    """Grouped conv (8 -> 12, groups=4): unit j is the j-th channel of every group.

    groups: conv1.weight:0 (2: even / odd input channels, i.e. gconv's weight
    column 0 / 1), gconv.weight:0 (3: output channels o with o % 3 == j).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gconv = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.conv3 = nn.Conv2d(12, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gconv(torch.relu(self.conv1(x))))
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


class FlattenLinear(nn.Module):
    """flatten -> linear: conv channel c owns the contiguous block of fc columns [4c, 4c+4).

    groups: conv.weight:0 (4), fc.weight:0 (5).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(torch.relu(self.conv(x))), 1)
        return self.fc2(torch.relu(self.fc(x)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's view/transpose/view channel shuffle."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleView(nn.Module):
    """Channel shuffle written as view/transpose/view (ShuffleNet), 2 groups of 4.

    Input channel k*4 + j goes to output j*2 + k, so unit j is {j, 4+j} before
    and {2j, 2j+1} after the shuffle. groups: conv1.weight:0 (4), conv2.weight:0 (6).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channel_shuffle(torch.relu(self.bn1(self.conv1(x))), 2)
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


class ShuffleModule(ShuffleView):
    """The same shuffle as ShuffleView, written with nn.ChannelShuffle(2); same groups."""

    def __init__(self) -> None:
        super().__init__()
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shuffle(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


class PixelShuffleNet(nn.Module):
    """nn.PixelShuffle(2): output channel c owns the producer's channels [4c, 4c+4).

    groups: conv1.weight:0 (4), conv2.weight:0 (5).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.ps = nn.PixelShuffle(2)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(self.ps(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(pool(x))))) with 1x1 convs, as torchvision's SqueezeExcitation."""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class SEBlock(nn.Module):
    """Squeeze-and-excitation: the gate's output channels are the gated channels.

    groups: conv1.weight:0 (8: conv1, bn1, se.fc1 columns, se.fc2 rows and bias,
    conv2 columns), se.fc1.weight:0 (2: the squeeze width), conv2.weight:0 (4).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.se = SqueezeExcite(8, 2)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


class MHANet(nn.Module):
    """nn.MultiheadAttention (embed 8, 4 heads, batch_first) between two linears.

    groups: inp.weight:0 (8: inp rows, in_proj columns), attn.in_proj_weight:0
    (4 heads: each owns 2 rows of each of q, k, v and 2 columns of out_proj),
    attn.out_proj.weight:0 (8: out_proj rows, head columns).
    """

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.attn = nn.MultiheadAttention(8, 4, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x))
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y)


class QKVAttention(nn.Module):
    """timm's Attention: one packed qkv linear, heads split by reshape/permute/unbind."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class QKVAttentionNet(nn.Module):
    """Manual timm-style qkv attention (dim 8, 2 heads of 4) between two linears.

    Heads are the units of the qkv rows / proj columns: a unit owns rows
    s*8 + h*4 + [0, 4) of qkv (s = q, k, v) and proj columns h*4 + [0, 4).
    groups: inp.weight:0 (8), attn.qkv.weight:0 (2 heads), attn.proj.weight:0 (8).
    """

    def __init__(self, dim: int = 8, num_heads: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(6, dim)
        self.attn = QKVAttention(dim, num_heads)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.attn(torch.relu(self.inp(x)))))


class CumsumBarrier(nn.Module):
    """torch.cumsum over channels has no rule: it is a barrier freezing conv1's channels.

    groups: conv2.weight:0 (6); frozen (barrier): conv1.weight:0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cumsum(torch.relu(self.conv1(x)), dim=1)
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def reverse_channels(x: torch.Tensor) -> torch.Tensor:
    """An opaque user function: fx keeps it as one call (torch.fx.wrap)."""
    return x.flip(1)


torch.fx.wrap("reverse_channels")


class WrappedBarrier(CumsumBarrier):
    """A torch.fx.wrap-ed user function has no rule: barrier, as in CumsumBarrier."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = reverse_channels(torch.relu(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


class Untraceable(nn.Module):
    """Data-dependent Python control flow: symbolic tracing must fail with TraceError."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # the data-dependent branch
            y = torch.relu(y)
        return y


class FunctionalBNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BatchNorm2d subclass whose own forward calls F.batch_norm on
    get_attr parameters, then an activation; the tracer goes inside it."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         False, 0.0, self.eps)
        return self.act(x)


class StdConv(nn.Conv2d):
    """timm's StdConv2d: the weight standardised per output filter with F.batch_norm on
    the reshaped weight, then reshape_as, then F.conv2d on the computed weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FunctionalLayers(nn.Module):
    """Every functional layer form on get_attr parameters: F.conv2d (plain and depthwise),
    F.batch_norm, F.group_norm, F.instance_norm, F.conv_transpose2d, F.linear, and a
    weight-standardised conv (StdConv) feeding a plain conv.

    groups: c1.weight:0 (4 units: c1 out = bn = dw (depthwise: its groups are rewritten)
    = gn, whose 4 groups of 2 channels are the units), ct.weight:1 (6: ct out = inorm =
    std in: marked mixing, the StdConv statistics run over its inputs), std.weight:0 (10:
    exact, the statistics are per output filter), c2.weight:0 (6).
    """

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = FunctionalBNAct(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gn = nn.GroupNorm(4, 8)
        self.ct = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.inorm = nn.InstanceNorm2d(6, affine=True)
        self.std = StdConv(6, 10, 3, padding=1)
        self.c2 = nn.Conv2d(10, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(F.conv2d(x, self.c1.weight, self.c1.bias, 1, 1))
        x = F.conv2d(x, self.dw.weight, self.dw.bias, 1, 1, 1, 8)
        x = torch.relu(F.group_norm(x, 4, self.gn.weight, self.gn.bias))
        x = F.conv_transpose2d(x, self.ct.weight, self.ct.bias, stride=2)
        x = F.instance_norm(x, weight=self.inorm.weight, bias=self.inorm.bias)
        x = torch.relu(self.c2(torch.relu(self.std(x))))
        return F.linear(x.mean((2, 3)), self.fc.weight, self.fc.bias)


class FunctionalTokens(nn.Module):
    """F.embedding, F.layer_norm (mixing) and F.linear on get_attr parameters, an
    attention-bias table gathered by a constant integer index buffer
    (``biases[:, idxs]``, LeViT), and view_as/expand_as/type_as.

    groups: the embedding dim (with the LayerNorm: mixing), the hidden width of the MLP,
    and the bias table's head dim (exact: the bias rows follow the heads).
    """

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.ln = nn.LayerNorm(8)
        self.up, self.down = nn.Linear(8, 12), nn.Linear(12, 8)
        self.heads = nn.Linear(8, 3 * 5)
        self.attention_biases = nn.Parameter(torch.randn(3, 9))
        self.register_buffer("idxs", torch.randint(0, 9, (5, 5)))
        self.out = nn.Linear(5 * 5, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = F.embedding(tokens, self.emb.weight)                       # [B, 5, 8]
        x = F.layer_norm(x, (8,), self.ln.weight, self.ln.bias)
        h = F.linear(x, self.up.weight, self.up.bias).relu()
        x = x + F.linear(h, self.down.weight, self.down.bias).view_as(x)
        a = self.heads(x).view(x.shape[0], 5, 3, 5).permute(0, 2, 1, 3)  # [B, heads=3, 5, 5]
        bias = self.attention_biases[:, self.idxs]                      # [3, 5, 5]
        a = a + bias.expand_as(a).type_as(a)
        return self.out(a.sum(1).flatten(1))  # a sum over heads: dead heads are inert


class InPlaceNet(nn.Module):
    """In-place ops as statements and as values: relu_(), mul_(), add_() with their results
    unused, ``+=`` on a tensor that another name aliases, torch.relu_, F.relu(inplace=True),
    nn.ReLU(inplace=True) and an in-place write into a channel slice (a view).

    groups: c1.weight:0 (8: c1 = c2 out, joined by the in-place adds), c3.weight:0 (6).
    """

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.act = nn.Conv2d(8, 6, 1), nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b1(self.c1(x))
        x.relu_()                      # a statement: its result is unused
        y = self.b2(self.c2(x))
        y.mul_(2.0)
        alias = y
        y += x                         # also changes ``alias``
        y.add_(x)
        part = y[:, 2:5]
        part *= 0.5                    # writes into y through a view
        z = self.c3(y + alias)
        self.act(z)
        torch.relu_(z)
        z = F.relu(z, inplace=True) + 0.1
        return self.fc(z.mean((2, 3)))


class TensorSplitNet(nn.Module):
    """torch.tensor_split / Tensor.tensor_split: by indices (uneven pieces [0, 3) and [3, 8)
    of conv1), by a section count (conv_b's halves, gated) and along H at index 1 (MViT
    splits its class token off this way); the pieces are offset slices, as with split.

    groups: conv1.weight:0 (8: channels 0-2 feed conv_a, 3-7 feed conv_b), conv_b.weight:0
    (3: the gated halves [0, 3) and [3, 6) are multiplied, unit i is conv_b channels i and
    3+i), conv_a.weight:0 (4: conv_a = conv_c out, added, into fc).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(5, 6, 1)
        self.conv_c = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        a, b = torch.tensor_split(y, [3], dim=1)
        g, h = self.conv_b(b).tensor_split(2, dim=1)
        z = torch.relu(self.conv_a(a)) + self.conv_c(g * torch.sigmoid(h))
        top, rest = torch.tensor_split(z, (1,), dim=2)
        return self.fc(top.mean((2, 3)) + rest.amax((2, 3)))


class SliceWrite(nn.Module):
    """In-place writes into channel and spatial slices whose results nobody uses (MViT's
    ``attn[:, :, 1:, 1:] += rel_pos``): ``add_`` into a view, and ``copy_`` of another
    conv's channels and of a broadcast parameter into channel slices of ``y``. torch.export
    records each as ``slice`` + ``add_``/``copy_``; the writes change ``y`` itself.

    groups: c1.weight:0 (8: c1 = c2 out (added); c3 out is y's channels 2-4, ``fill`` its
    channels 6-7).
    """

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 3, 1)
        self.fill = nn.Parameter(torch.randn(1, 2, 1, 1))
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        y[:, :, 1:].add_(self.c2(x)[:, :, 1:])
        y[:, 2:5].copy_(self.c3(x))
        y[:, 6:].copy_(self.fill)
        return self.fc(y.relu().mean((2, 3)))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics, so a
    dead-channel test notices a statistic selected along the wrong channels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


_IMAGE, _TOKENS = (2, 3, 8, 8), (2, 5, 6)

TOY_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "residual": (ResidualAdd, _IMAGE),
    "concat_channels": (ConcatChannels, _IMAGE),
    "concat_height": (ConcatHeight, _IMAGE),
    "split_chunk": (SplitChunk, _IMAGE),
    "depthwise": (Depthwise, _IMAGE),
    "grouped": (GroupedConv, _IMAGE),
    "flatten_linear": (FlattenLinear, _IMAGE),
    "shuffle_view": (ShuffleView, _IMAGE),
    "shuffle_module": (ShuffleModule, _IMAGE),
    "pixel_shuffle": (PixelShuffleNet, _IMAGE),
    "se_block": (SEBlock, _IMAGE),
    "mha": (MHANet, _TOKENS),
    "qkv_attention": (QKVAttentionNet, _TOKENS),
    "cumsum_barrier": (CumsumBarrier, _IMAGE),
    "wrapped_barrier": (WrappedBarrier, _IMAGE),
    "functional_layers": (FunctionalLayers, _IMAGE),
    "functional_tokens": (FunctionalTokens, (2, 5)),
    "inplace": (InPlaceNet, _IMAGE),
    "tensor_split": (TensorSplitNet, _IMAGE),
    "slice_write": (SliceWrite, _IMAGE),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The toy model ``name``, seeded, with random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    return randomize_norms(TOY_MODELS[name][0](), seed).eval()


def example_input(name: str, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if name == "functional_tokens":  # token ids
        return torch.randint(0, 11, TOY_MODELS[name][1], generator=gen)
    return torch.randn(TOY_MODELS[name][1], generator=gen)
