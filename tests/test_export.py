"""ONNX and torch.export round trips: ONNX Runtime and the reloaded ExportedProgram
must reproduce torch's outputs, on resnet18 and on a pruned module."""
from __future__ import annotations

import pytest
import torch
import torchvision

from fxprune import export

ort = pytest.importorskip("onnxruntime")


def _run_and_check(module, x, tmp_path, exporter="torchscript", other_batch=3):
    """Export with a dynamic batch, then compare ORT with torch at the export batch and
    at ``other_batch``; returns the ONNX path."""
    path = export.to_onnx(module, (x,), tmp_path / "m.onnx", exporter=exporter)
    assert path.is_file() and not list(tmp_path.glob("*.part*"))
    sess = export.onnx_session(path)
    for xb in (x, torch.randn(other_batch, *x.shape[1:])):
        got = sess.run(None, {sess.get_inputs()[0].name: xb.numpy()})[0]
        with torch.no_grad():
            ref = module.eval()(xb)
        assert got.shape == tuple(ref.shape)
        torch.testing.assert_close(torch.from_numpy(got), ref, rtol=1e-4, atol=1e-4)
    assert export.check_onnx(module, (x,), path) < 1e-3
    return path


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_resnet18_onnx_round_trip(resnet18, tmp_path):
    _run_and_check(resnet18, torch.randn(2, 3, 32, 32), tmp_path)


@pytest.mark.slow
def test_resnet18_onnx_round_trip_dynamo(resnet18, tmp_path):
    _run_and_check(resnet18, torch.randn(2, 3, 64, 64), tmp_path, exporter="dynamo")


def test_static_batch_is_static(tmp_path):
    from tiny_models import tiny

    path = export.to_onnx(tiny(), torch.randn(2, 3, 16, 16), tmp_path / "s.onnx",
                          dynamic_batch=False)
    assert export.onnx_session(path).get_inputs()[0].shape == [2, 3, 16, 16]


def test_check_onnx_detects_a_different_model(tmp_path):
    from tiny_models import tiny

    x = torch.randn(1, 3, 16, 16)
    path = export.to_onnx(tiny(), x, tmp_path / "m.onnx")
    other = tiny()
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    with pytest.raises(export.ExportError, match="differs"):
        export.check_onnx(other, x, path)


def test_failed_export_leaves_no_file(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(export.ExportError, match="boom"):
        export.to_onnx(Bad(), torch.randn(1, 3), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_pt2_round_trip(tmp_path):
    from tiny_models import tiny

    model, x = tiny(), torch.randn(2, 3, 16, 16)
    path = export.to_pt2(model, (x,), tmp_path / "m.pt2")
    loaded = torch.export.load(str(path)).module()
    torch.testing.assert_close(loaded(x), model(x))


def test_pruned_module_onnx_round_trip(tmp_path):
    import fxprune
    from tiny_models import tiny

    model, x = tiny(), torch.randn(2, 3, 16, 16)
    res = fxprune.prune(model, (x,), ratio=0.5)
    assert fxprune.count(res.module, (x,)).params < fxprune.count(model, (x,)).params
    _run_and_check(res.module, x, tmp_path)


def test_pruned_resnet18_onnx_round_trip(resnet18, tmp_path):
    import fxprune

    x = torch.randn(1, 3, 32, 32)
    res = fxprune.prune(resnet18, (x,), ratio=0.3)
    _run_and_check(res.module, x, tmp_path)
