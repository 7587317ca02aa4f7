"""Tied weights: an embedding and an output layer sharing one Parameter stay one
Parameter after pruning, in both forms a language model writes the tie."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune


class TiedByModule(nn.Module):
    """The output Linear's weight *is* the embedding's (``out.weight = emb.weight``), as
    Hugging Face's ``tie_weights`` does; the embedding dim is a prunable group."""

    def __init__(self, vocab: int = 20, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mid, self.back = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens)
        return self.out(self.back(torch.relu(self.mid(h))) + h)


class TiedByFunction(TiedByModule):
    """The same tie written ``F.linear(h, self.emb.weight)``; the module ``out`` still
    holds the Parameter but the graph never calls it."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens)
        return F.linear(self.back(torch.relu(self.mid(h))) + h, self.emb.weight)


class OutFirst(TiedByFunction):
    """``out`` registered before ``emb``: the Parameter's first name is the unused
    module's (``out.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        emb = self.emb
        del self.emb
        self.emb = emb  # now registered after out


def _run_and_check(model: nn.Module) -> fxprune.PruneResult:
    tokens = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(0))
    res = fxprune.prune(model.eval(), tokens, ratio=0.5)
    assert res.oracle_diff is not None and res.oracle_diff <= 1e-5
    emb = res.module.get_parameter("emb.weight")
    assert emb.shape == (20, 8), "the embedding dim was not pruned: the check would be vacuous"
    aliases = {n for n, p in model.named_parameters(remove_duplicate=False)
               if p is model.emb.weight}
    present = aliases & set(dict(res.module.named_parameters(remove_duplicate=False)))
    assert present and all(res.module.get_parameter(n) is emb for n in present), present
    return res


@pytest.mark.parametrize("cls", [TiedByModule, TiedByFunction, OutFirst])
def test_tie_stays_one_parameter(cls) -> None:
    torch.manual_seed(0)
    res = _run_and_check(cls())
    if cls is TiedByModule:
        assert res.module.get_submodule("out").weight is res.module.get_submodule("emb").weight
        n_params = len(list(res.module.parameters()))
        assert n_params == len(dict(res.module.named_parameters(remove_duplicate=False))) - 1


def test_tie_survives_training_step() -> None:
    """One Parameter means one gradient: a step moves both uses together."""
    torch.manual_seed(0)
    res = _run_and_check(TiedByModule())
    m = res.module.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(torch.randint(0, 20, (2, 5))).sum().backward()
    opt.step()
    assert torch.equal(m.get_submodule("out").weight, m.get_submodule("emb").weight)


@pytest.mark.parametrize("cls", [TiedByModule, OutFirst])
def test_ignoring_the_tied_head_freezes_the_shared_dim(cls) -> None:
    """``ignore=[model.out]`` on a tied head must freeze the embedding dim whichever name the
    analysis gives the shared Parameter (GPT-2's lm_head is wte's weight)."""
    model = cls().eval()
    tokens = torch.randint(0, 20, (2, 5))
    cg = fxprune.analyze(model, tokens, ignore=[model.out])
    ids = {g.id for g in cg.groups}
    assert not any(m.key.endswith("emb.weight") or m.key.endswith("out.weight")
                   for g in cg.groups for m in g.params()), ids


@pytest.mark.parametrize("cls", [TiedByModule, OutFirst])
def test_export_frontend_self_check_zeroes_every_name_of_a_tie(cls) -> None:
    """torch.export keeps one name per tied tensor; the oracle's zeroed copy of the user's
    model must replace the tensor under all its names (GPT-2's wte / lm_head), or the
    copy keeps an empty placeholder under the other name and cannot run."""
    torch.manual_seed(0)
    model = cls().eval()
    tokens = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(0))
    res = fxprune.prune(model, tokens, ratio=0.5, frontend="export")
    assert res.graph.frontend == "export"
    assert res.oracle_diff is not None and res.oracle_diff <= 1e-5
    assert fxprune.verify(model, res, tokens) <= 1e-5
