"""Loading never runs code a file names: crafted save directories, crafted resume files,
and a scan of the package for unpickling.

Each crafted directory is a real save whose meta.json was rewritten (and its manifest
re-hashed, as an attacker would) to name a factory that writes a marker file when
imported or called; loading must raise a named error and leave no marker.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tiny_models import tiny

import fxprune
from fxprune import io, savedir
from fxprune.file_errors import UntrustedFactoryError

ROOT = Path(__file__).resolve().parent.parent
X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def result():
    return fxprune.prune(tiny(), (X,), ratio=0.5)


def _craft(path: Path, **meta_changes) -> None:
    """Rewrite meta.json and re-hash the manifest, so only the trust rules stand in the way."""
    meta = json.loads((path / "meta.json").read_text())
    meta.update(meta_changes)
    (path / "meta.json").write_text(json.dumps(meta))
    savedir.write_manifest(path, [n for n in savedir.read_manifest(path)])


def _evil_package(root: Path, marker: Path) -> None:
    """An importable package whose import and factory both write ``marker``."""
    pkg = root / "evil_pkg"
    pkg.mkdir()
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (pkg / "__init__.py").write_text(code)
    (pkg / "models.py").write_text(f"{code}def make():\n    {code.strip()}\n    return None\n")


def _specs(d: Path, marker: Path) -> dict[str, str]:
    m = str(marker)
    return {
        "subprocess": f"subprocess:run(args=['touch', {m!r}])",
        "os": f"os:system(command='touch {m}')",
        "exec": f"builtins:exec(source='open({m!r}, \"w\")')",
        "importlib": "importlib:import_module(name='evil_pkg')",
        "dotted-path": "evil_pkg.models:make",
        "installed-package": f"fxprune.cli:main(argv=['prune', 'x', '--out', {m!r}])",
        "torch.hub": f"torch.hub:load(repo_or_dir={str(d)!r}, model='tiny', source='local', "
                     "trust_repo=True)",
        "timm-checkpoint": f"timm:resnet18(checkpoint_path={m!r})",
        "tv-weights": "resnet18(weights='IMAGENET1K_V1')",
    }


@pytest.mark.parametrize("kind", list(_specs(Path("d"), Path("m"))))
def test_crafted_factory_is_refused_and_nothing_runs(tmp_path, result, monkeypatch, kind):
    marker = tmp_path / "marker"
    _evil_package(tmp_path, marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    d = io.save(tmp_path / "m", result, example_inputs=(X,), factory="tiny_models:tiny")
    (d / "hubconf.py").write_text(  # what torch.hub:load(source='local') would run
        f"open({str(marker)!r}, 'w').write('ran')\nfrom tiny_models import tiny\n")
    _craft(d, model_factory=_specs(d, marker)[kind])
    with pytest.raises(UntrustedFactoryError, match=r"model_factory=.*trust_factory=True"):
        io.load(d)
    with pytest.raises(UntrustedFactoryError):
        fxprune.load(d)
    assert not marker.exists(), f"{kind}: loading ran code named by meta.json"


def test_torch_hub_dir_loads_only_when_trusted(tmp_path, result, monkeypatch):
    """The same hubconf.py directory runs when (and only when) the caller says so."""
    marker = tmp_path / "marker"
    d = io.save(tmp_path / "m", result, example_inputs=(X,), factory="tiny_models:tiny")
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "hubconf.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom tiny_models import tiny\n")
    _craft(d, model_factory=f"torch.hub:load(repo_or_dir={str(tmp_path / 'hub')!r}, "
                            "model='tiny', source='local', trust_repo=True)")
    with pytest.raises(UntrustedFactoryError):
        io.load(d)
    assert not marker.exists()
    res = io.load(d, trust_factory=True)
    assert marker.exists() and res.module(X).shape == (1, 4)


def test_registry_factory_loads_without_trust(tmp_path):
    from fxprune import models

    model = models.get_model("resnet20", num_classes=4, width=4).eval()
    x = torch.randn(1, 3, 32, 32)
    res = fxprune.prune(model, (x,), ratio=0.5)
    d = fxprune.save(tmp_path / "c", res, example_inputs=(x,),
                     factory="cifar:resnet20(num_classes=4, width=4)")
    torch.testing.assert_close(fxprune.load(d).module(x), res.module.eval()(x))


def test_caller_factory_and_spec_stay_allowed(tmp_path, result):
    d = io.save(tmp_path / "m", result, example_inputs=(X,), factory="os:system")
    assert io.load(d, tiny).plan == result.plan  # a callable the caller passes
    assert io.load(d, "tiny_models:tiny").plan == result.plan  # a spec the caller typed


def test_crafted_resume_files_are_not_unpickled(tmp_path):
    """Pickles named like the old resume files: refused, never loaded."""
    from fxprune.search import tas
    from fxprune.train.recipes import iterative

    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save(Evil(), tmp_path / "round_00.pt")
    with pytest.raises(fxprune.FxPruneError, match="no longer unpickles"):
        iterative(tiny(), lambda m, r: m, lambda m, r: m, 2, out_dir=tmp_path, resume=True)
    torch.save(Evil(), tmp_path / "tas_search.pt")
    with pytest.raises(fxprune.FxPruneError, match="no longer unpickled"):
        tas.search(tiny(), X, None, epochs=1, out_dir=tmp_path, resume=True)
    assert not marker.exists()


_UNPICKLING = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|\bdill\.|Unpickler\(")
# reads the CIFAR-10 "python version" release through _ArrayUnpickler, which builds numpy
# arrays only (test_cifar_batch_unpickler_refuses_code below)
_KNOWN = {"fxprune/data.py"}


def test_cifar_batch_unpickler_refuses_code(tmp_path):
    import os
    import pickle

    import numpy as np

    from fxprune.data import _unpickle

    good = tmp_path / "good"
    good.write_bytes(pickle.dumps({b"data": np.zeros((2, 3), np.uint8), b"labels": [1, 2]}))
    assert _unpickle(good)[b"labels"] == [1, 2]
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "bad"
    bad.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(fxprune.FxPruneError, match="only numpy arrays"):
        _unpickle(bad)
    assert not marker.exists()


def test_no_unpickling_in_the_package():
    hits = []
    for folder in ("fxprune", "passes", "models"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if _UNPICKLING.search(line) and rel not in _KNOWN:
                    hits.append(f"{rel}:{i}: {line.strip()}")
    assert not hits, "unpickling in the package:\n" + "\n".join(hits)
    assert _UNPICKLING.search("torch.load(p, weights_only=False)")  # the scan can fail
