"""Tests for passes/reconstruct.py: contributions, ThiNet, LASSO, rescale, weight reconstruction."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fxprune.passes.reconstruct import (
    ChannelGram,
    channel_contributions,
    channel_gram,
    lasso_select,
    least_squares_rescale,
    reconstruct_weight,
    reconstruction_error,
    thinet_select,
)
from torch import nn


def _flat_out(y: torch.Tensor) -> torch.Tensor:
    """Layer output as [positions, O] in (batch, row-major) order."""
    if y.dim() == 4:
        return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2), (3, 6, 7, 7)),
    (nn.Conv2d(6, 4, (3, 2), padding="same", dilation=2), (2, 6, 5, 6)),
    (nn.Linear(6, 4), (5, 2, 6)),
])
def test_contributions_sum_to_output_and_gram_agrees(layer: nn.Module, shape: tuple) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape)
    z = channel_contributions(layer, x, num_samples=None)
    expected = _flat_out(layer(x).detach()).double() - layer.bias.detach().double()
    torch.testing.assert_close(z.sum(1), expected, rtol=1e-5, atol=1e-5)
    g = channel_gram(layer, x)
    dense = torch.einsum("nco,ndo->cd", z, z)
    torch.testing.assert_close(g.gram, dense)
    torch.testing.assert_close(g.cross, dense.sum(1))
    with_target = channel_gram(layer, x, target=layer(x).detach())
    torch.testing.assert_close(with_target.cross, g.cross, rtol=1e-5, atol=1e-5)
    sub = channel_contributions(layer, x, num_samples=7, seed=3)
    assert sub.shape == (7, 6, 4)
    assert torch.equal(sub, channel_contributions(layer, x, num_samples=7, seed=3))


def _uneven_problem(seed: int = 0) -> tuple[nn.Conv2d, torch.Tensor]:
    """A 3x3 conv whose input channels differ in what data shows and weights hide.

    Channels 0-3 carry independent signal, 4-7 are near-copies of 0-3, and 8-11 are
    nearly silent but have 10x larger weights, so L1-norm selection keeps the
    silent ones while the data says to keep 0-7.
    """
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(24, 4, 6, 6, generator=g)
    x = torch.cat([base, base + 0.05 * torch.randn(24, 4, 6, 6, generator=g),
                   0.01 * torch.randn(24, 4, 6, 6, generator=g)], 1)
    layer = nn.Conv2d(12, 8, 3, padding=1)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(8, 12, 3, 3, generator=g))
        layer.weight[:, 8:] *= 10
    return layer, x


def _output_error(layer: nn.Conv2d, x: torch.Tensor, kept: torch.Tensor,
                  weight: torch.Tensor) -> float:
    """|y - y_hat|^2 of the pruned conv, computed directly (not through the Gram algebra)."""
    ref = F.conv2d(x, layer.weight.detach(), None, padding=1)
    return float(((F.conv2d(x[:, kept], weight.detach(), None, padding=1) - ref) ** 2).sum())


def _run_and_check(select, keep: int = 6) -> None:
    """``select`` beats L1-norm and random selection, after ThiNet-style rescaling."""
    layer, x = _uneven_problem()
    gram = channel_gram(layer, x)
    w = layer.weight.detach()

    def err(kept: torch.Tensor) -> float:
        scales = least_squares_rescale(gram, kept)
        direct = _output_error(layer, x, kept, w[:, kept] * scales.view(1, -1, 1, 1))
        assert reconstruction_error(gram, kept, scales) == pytest.approx(direct, rel=1e-3)
        return direct

    kept = select(gram, keep)
    assert kept.dtype == torch.long and len(kept) == keep and torch.equal(kept, kept.sort().values)
    l1 = w.abs().sum((0, 2, 3)).topk(keep).indices.sort().values
    g = torch.Generator().manual_seed(1)
    random_errs = [err(torch.randperm(12, generator=g)[:keep].sort().values) for _ in range(20)]
    mine = err(kept)
    assert mine < 0.5 * err(l1)
    assert mine < min(random_errs)
    assert set(kept.tolist()) <= set(range(8))  # never a silent channel


def test_thinet_beats_l1_and_random() -> None:
    _run_and_check(thinet_select)


def test_lasso_beats_l1_and_random() -> None:
    _run_and_check(lasso_select)


@pytest.mark.parametrize("select", [thinet_select, lasso_select])
def test_dead_channels_are_removed_first(select) -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(8, 5, 3)
    x = torch.randn(6, 8, 5, 5)
    dead = [1, 4, 6]
    x[:, dead] = 0
    with torch.no_grad():
        layer.weight[:, dead] *= 100  # large weights must not save them
    alive = [c for c in range(8) if c not in dead]
    z = channel_contributions(layer, x, num_samples=40)
    assert select(z, 5).tolist() == alive
    assert select(channel_gram(layer, x), 5).tolist() == alive


def test_lasso_hits_every_keep_exactly() -> None:
    layer, x = _uneven_problem(seed=2)
    gram = channel_gram(layer, x, num_samples=200)
    for keep in range(13):
        kept = lasso_select(gram, keep)
        assert len(kept) == keep and len(set(kept.tolist())) == keep


@pytest.mark.parametrize("how", ["thinet", "spanning"])
def test_reconstructed_weight_beats_slicing_and_rescale(how: str) -> None:
    layer, x = _uneven_problem()
    gram = channel_gram(layer, x)
    # "spanning": the kept channels carry all the signal, so a refit must get close
    kept = thinet_select(gram, 5) if how == "thinet" else torch.tensor([0, 1, 2, 3, 8])
    w = layer.weight.detach()
    new_w = reconstruct_weight(layer, x[:, kept], layer(x).detach())
    assert new_w.shape == (8, 5, 3, 3)
    sliced = _output_error(layer, x, kept, w[:, kept])
    scales = least_squares_rescale(gram, kept).view(1, -1, 1, 1)
    rebuilt = _output_error(layer, x, kept, new_w)
    assert rebuilt < 0.9 * sliced
    assert rebuilt <= _output_error(layer, x, kept, w[:, kept] * scales) * (1 + 1e-6)
    if how == "spanning":
        assert rebuilt < 0.05 * sliced
        # held-out data: the fit generalises, it is not memorising the calibration batch
        _, x2 = _uneven_problem(seed=5)
        held_out = _output_error(layer, x2, kept, new_w)
        assert held_out < 0.05 * _output_error(layer, x2, kept, w[:, kept])


def test_reconstruct_linear_recovers_exact_weight() -> None:
    """Kept inputs that span the dropped ones: least squares folds them in exactly."""
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    a = torch.randn(50, 2)
    x = torch.cat([a, a @ torch.tensor([[1.0, 2.0], [-1.0, 0.5]])], 1)  # 2, 3 depend on 0, 1
    new_w = reconstruct_weight(layer, x[:, :2], layer(x).detach())
    out = F.linear(x[:, :2], new_w, layer.bias)
    torch.testing.assert_close(out, layer(x), rtol=1e-4, atol=1e-4)


def test_bad_input_errors() -> None:
    layer, x = _uneven_problem()
    with pytest.raises(ValueError, match="keep"):
        thinet_select(channel_gram(layer, x), 13)
    with pytest.raises(ValueError, match="groups"):
        reconstruct_weight(nn.Conv2d(4, 4, 1, groups=2), x[:, :4], torch.zeros(24, 4, 6, 6))
    with pytest.raises(ValueError, match="target shape"):
        reconstruct_weight(layer, x[:, :4], torch.zeros(24, 3, 6, 6))
    with pytest.raises(TypeError, match="Conv2d or nn.Linear"):
        channel_gram(nn.Conv1d(2, 2, 1), torch.zeros(1, 2, 3))
    assert isinstance(channel_gram(layer, x), ChannelGram)
    silent = torch.zeros(4, 5, 3)  # no channel contributes: any `keep` channels will do
    assert len(lasso_select(silent, 2)) == 2 and len(thinet_select(silent, 2)) == 2
