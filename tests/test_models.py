"""The architectures: any input size, the pooling head, ResNet18's ImageNet stem from a local file."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
import torchvision
from torch import nn

from esc50_lightning.errors import UserError
from esc50_lightning.models import CNN4, CNN8, VGG8, ResNet18
from esc50_lightning.models import resnet as resnet_module


@pytest.mark.parametrize("cls", [CNN4, CNN8, VGG8, ResNet18])
@pytest.mark.parametrize("shape", [(100, 384), (128, 431), (64, 100), (40, 37)])
def test_forward_any_input_size(cls, shape):
    net = cls(num_classes=7).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 1, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_resnet18_folds_imagenet_stem_from_local_file(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(reference.state_dict(), path)
    net = ResNet18(num_classes=50, pretrained=True, weights_path=str(path))
    torch.testing.assert_close(net.net.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(net.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    # a grey image through the folded stem equals the RGB stem on three equal channels
    grey = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(net.net.conv1(grey), reference.conv1(grey.repeat(1, 3, 1, 1)))


def test_resnet18_missing_weights_file_is_named(tmp_path):
    with pytest.raises(UserError, match=r"nope\.pth: ResNet18 weights file not found"):
        ResNet18(pretrained=True, weights_path=str(tmp_path / "nope.pth"))


def test_resnet18_offline_download_says_how_to_supply_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(resnet_module, "IMAGENET_URL", (tmp_path / "offline.pth").as_uri())
    with pytest.raises(UserError) as err:
        resnet_module.ResNet18(pretrained=True)
    message = str(err.value)
    assert "cannot download ImageNet weights from file://" in message
    assert f"put it at {tmp_path / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'}" in message
    assert "model.net.weights_path=/path/to/resnet18-f37072fd.pth" in message


def test_resnet18_downloads_imagenet_weights_once_and_checks_their_hash(tmp_path, monkeypatch):
    """The real download path fed a local file: sha256 prefix from torchvision's file name checked,
    the file kept in torch hub's checkpoints/ and reused, read weights-only."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    served = tmp_path / "served.pth"
    torch.save(reference.state_dict(), served)
    folder = tmp_path / "hub" / "checkpoints"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(resnet_module, "IMAGENET_URL", served.as_uri())
    # Not the file torchvision publishes (its sha256 does not start with f37072fd): refused, not kept.
    with pytest.raises(UserError, match=r"sha256 [0-9a-f]{64}, expected f37072fd"):
        ResNet18(pretrained=True)
    assert not list(folder.iterdir())

    monkeypatch.setattr(resnet_module, "IMAGENET_SHA256", hashlib.sha256(served.read_bytes()).hexdigest()[:8])
    net = ResNet18(num_classes=50, pretrained=True)
    assert [p.name for p in folder.iterdir()] == ["resnet18-f37072fd.pth"]
    torch.testing.assert_close(net.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    served.unlink()  # a second build reads the kept copy: no download
    again = ResNet18(num_classes=50, pretrained=True)
    torch.testing.assert_close(again.net.conv1.weight, net.net.conv1.weight)


def test_resnet18_weights_file_holding_code_is_refused(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "hook": os.getcwd}, path)
    with pytest.raises(UserError, match=r"resnet18\.pth: refused"):
        ResNet18(pretrained=True, weights_path=str(path))


def test_avgmax_pooling_counts_a_short_event_fully():
    from esc50_lightning.models.blocks import ClassifierHead

    x = torch.zeros(1, 4, 8, 100)
    x[..., 50] = 1.0  # an event one frame long, across all channels and bands
    logits = {}
    for pooling in ("avg", "avgmax"):
        head = ClassifierHead(4, 1, dropout=0.0, pooling=pooling)
        torch.nn.init.ones_(head.fc.weight)
        torch.nn.init.zeros_(head.fc.bias)
        logits[pooling] = head(x).item()
    assert logits["avg"] == pytest.approx(4 * 0.01)  # diluted by the 99 silent frames
    assert logits["avgmax"] == pytest.approx(4 * (1.0 + 0.01))
    with pytest.raises(UserError, match="pooling='max'"):
        ClassifierHead(4, 1, pooling="max")


def test_input_bn_normalises_every_mel_row_on_its_own():
    from esc50_lightning.models.blocks import InputNorm

    norm = InputNorm(6).train()
    # Rows at very different levels and spreads, as low and high mel bands are.
    x = torch.randn(8, 1, 6, 50) * torch.arange(1.0, 7.0)[:, None] + torch.arange(6.0)[:, None] * 10
    y = norm(x)
    torch.testing.assert_close(y.mean(dim=(0, 1, 3)), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 1, 3), unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    assert torch.equal(InputNorm(0)(x), x) and torch.equal(InputNorm(False)(x), x)
    net = VGG8(num_classes=5, channels=[4, 8, 8, 8], input_bn=6).eval()
    assert net(x).shape == (8, 5)
    with pytest.raises(UserError, match="input_bn normalises 6 mel rows, but the input has 7"):
        net(torch.randn(2, 1, 7, 50))
    with pytest.raises(UserError, match=r"number of mel rows .* not true"):
        InputNorm(True)


@pytest.mark.parametrize("shape", [(2, 3, 7, 25), (2, 3, 8, 24), (2, 3, 7, 24), (2, 3, 8, 25), (1, 1, 1, 1)])
def test_vgg_pooling_is_ceil_mode_average_pooling(shape):
    """vgg8's pooling (AvgPool2x2, which avoids a NaN-gradient bug of compiled ceil-mode pooling
    in bf16) computes what nn.AvgPool2d(2, ceil_mode=True) does, forward and backward, so
    checkpoints trained with either score the same."""
    from esc50_lightning.models.blocks import AvgPool2x2

    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    reference = x.detach().clone().requires_grad_()
    out, expected = AvgPool2x2()(x), nn.AvgPool2d(2, ceil_mode=True)(reference)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, reference.grad, rtol=0, atol=1e-6)
    if shape == (2, 3, 8, 25):  # by hand: the odd last column averages its own two rows, no zeros
        last = x.detach()[..., 24]
        torch.testing.assert_close(out.detach()[..., 12], (last[..., 0::2] + last[..., 1::2]) / 2)
