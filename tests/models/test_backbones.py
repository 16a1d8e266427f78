"""Backbones: feature maps from any timm family, names, hub failures, weights files, freezing."""

from __future__ import annotations

import logging
import time

import pytest
import safetensors.torch
import timm
import torch
from torch import nn

from clipdoctor.errors import ClipdoctorError
from clipdoctor.models import Backbone, create_backbone, freeze, list_backbones


@pytest.fixture
def resnet():
    """(Backbone, BackboneInfo) of resnet10t with random weights, seeded: same numbers every run.
    (Not in a tests/models/conftest.py: that would shadow the `conftest` tests/ imports from.)"""
    torch.manual_seed(0)
    return create_backbone("resnet10t", pretrained=False)


# -- feature maps ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050"])
def test_cnn_gives_feature_map_and_data_config(name):
    backbone, info = create_backbone(name, pretrained=False)
    with torch.no_grad():
        f = backbone.eval()(torch.randn(2, 3, 64, 64))
    assert f.shape == (2, info.channels, 2, 2)  # stride 32
    dc = timm.data.resolve_model_data_config(backbone.model)
    assert info.mean == tuple(dc["mean"]) and info.std == tuple(dc["std"])
    assert info.input_size == tuple(dc["input_size"])
    assert info.weights == "random" and info.missing_keys == () and info.unexpected_keys == ()


def test_vit_tokens_become_patch_grid_without_class_token():
    torch.manual_seed(0)
    backbone, info = create_backbone("test_vit", pretrained=False)  # patch 16, 1 class token
    x = torch.randn(2, 3, 64, 96)  # not the 160 px it was built for: dynamic size
    with torch.no_grad():
        f = backbone.eval()(x)
        tokens = backbone.model.forward_features(x)  # (2, 1 + 4*6, C)
    assert f.shape == (2, info.channels, 4, 6)
    assert backbone.num_prefix_tokens == 1
    for i, j in [(0, 0), (0, 5), (3, 0), (2, 4)]:  # row-major patch order
        torch.testing.assert_close(f[:, :, i, j], tokens[:, 1 + i * 6 + j])


def test_nhwc_output_is_permuted_to_nchw():
    backbone, info = create_backbone("test_mambaout", pretrained=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        f = backbone.eval()(x)
        raw = backbone.model.forward_features(x)  # (1, h, w, C)
    assert f.shape == (1, info.channels, 2, 2)
    torch.testing.assert_close(f, raw.permute(0, 3, 1, 2))


def test_fixed_size_model_says_which_size():
    backbone, _ = create_backbone("levit_128s", pretrained=False)  # attention biases fix 224 px
    with pytest.raises(ClipdoctorError, match=r"only takes 224x224 images, got 64x64.*--size 224"):
        backbone(torch.randn(1, 3, 64, 64))


# -- names -----------------------------------------------------------------------------------
def test_unknown_name_lists_close_matches():
    with pytest.raises(ClipdoctorError) as e:
        create_backbone("resnet5")
    msg = str(e.value)
    assert msg.startswith("unknown backbone 'resnet5' — close matches: ")
    assert "resnet50" in msg and "clipdoctor backbones PATTERN" in msg


def test_unknown_name_without_any_match():
    with pytest.raises(ClipdoctorError, match="no close match among timm's"):
        create_backbone("zzzqqq")


def test_list_backbones():
    assert "resnet10t" in list_backbones("resnet1*")
    assert all(n.startswith("resnet1") for n in list_backbones("resnet1*"))
    assert any(n.startswith("resnet10t.") for n in list_backbones("resnet10t*", pretrained_only=True))


# -- hub -------------------------------------------------------------------------------------
def test_pretrained_failure_is_one_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)  # never the network
    start = time.perf_counter()
    with pytest.raises(ClipdoctorError) as e:
        create_backbone("resnet10t", pretrained=True)
    assert time.perf_counter() - start < 5
    msg = str(e.value)
    assert "\n" not in msg and "resnet10t" in msg and "couldn't connect" in msg
    assert "--weights FILE" in msg and "--no-pretrained" in msg


def test_weights_file_wins_over_pretrained(monkeypatch, resnet, tmp_path):
    monkeypatch.setattr(timm.models._builder, "load_pretrained",
                        lambda *a, **k: pytest.fail("the hub was contacted although a file was given"))
    path = tmp_path / "w.pt"
    torch.save(resnet[0].model.state_dict(), path)
    _, info = create_backbone("resnet10t", pretrained=True, weights=path)
    assert info.weights == str(path)


# -- weights files ---------------------------------------------------------------------------
def _source(resnet) -> Backbone:
    """The fixture's backbone with BN running statistics that a fresh model does not have."""
    backbone = resnet[0]
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return backbone


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("kind", ["torch", "torch-wrapper", "safetensors", "module-prefix", "checkpoint"])
def test_weights_file_round_trip(resnet, tmp_path, kind):
    src = _source(resnet)
    sd = src.model.state_dict()
    path = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pth")
    if kind == "torch":
        torch.save(sd, path)
    elif kind == "torch-wrapper":  # Backbone.state_dict(): keys "model.conv1.0.weight", ...
        torch.save(src.state_dict(), path)
    elif kind == "safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif kind == "module-prefix":  # DataParallel
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:  # a Lightning-style checkpoint of a whole ClipClassifier
        state = {f"model.backbone.model.{k}": v for k, v in sd.items()}
        state["model.head.fc.weight"] = torch.zeros(3, 8)
        torch.save({"state_dict": state, "epoch": 3}, path)
    torch.manual_seed(1)
    fresh, info = create_backbone("resnet10t", weights=path)
    _assert_same(fresh.model, src.model)
    assert info.missing_keys == () and info.unexpected_keys == ()
    assert info.weights == str(path)


def test_classifier_tensors_of_a_full_model_are_dropped(tmp_path):
    full = timm.create_model("resnet10t", pretrained=False)  # with its 1000-class fc
    path = tmp_path / "full.pth"
    torch.save(full.state_dict(), path)
    backbone, info = create_backbone("resnet10t", weights=path)
    assert info.missing_keys == () and info.unexpected_keys == ()
    torch.testing.assert_close(backbone.model.conv1[0].weight, full.conv1[0].weight)


def test_partial_file_reports_missing_keys(resnet, tmp_path, caplog):
    src = _source(resnet)
    sd = {k: v for k, v in src.model.state_dict().items() if not k.startswith("layer4.")}
    sd["extra.weight"] = torch.zeros(2)
    path = tmp_path / "part.pth"
    torch.save(sd, path)
    with caplog.at_level(logging.WARNING, logger="clipdoctor.models.backbones"):
        fresh, info = create_backbone("resnet10t", weights=path)
    assert info.missing_keys and all(k.startswith("layer4.") for k in info.missing_keys)
    assert not any(k.endswith("num_batches_tracked") for k in info.missing_keys)
    assert info.unexpected_keys == ("extra.weight",)
    torch.testing.assert_close(fresh.model.layer3[0].conv1.weight, src.model.layer3[0].conv1.weight)
    assert f"{len(info.missing_keys)} missing" in caplog.text and "1 unexpected" in caplog.text


def test_shape_mismatch_counts_as_missing_and_unexpected(resnet, tmp_path):
    sd = dict(resnet[0].model.state_dict())
    sd["layer4.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    _, info = create_backbone("resnet10t", weights=path)
    assert info.missing_keys == ("layer4.0.conv1.weight",)
    assert info.unexpected_keys == ("layer4.0.conv1.weight",)


def test_file_of_another_model_is_refused(tmp_path):
    other, _ = create_backbone("mobilenetv3_small_050")
    path = tmp_path / "mobilenet.pth"
    torch.save(other.model.state_dict(), path)
    with pytest.raises(ClipdoctorError, match=r"none of the \d+ keys in .*mobilenet.pth match backbone "
                                              r"resnet10t.*another model"):
        create_backbone("resnet10t", weights=path)


def test_file_of_another_variant_is_refused(tmp_path):
    other, _ = create_backbone("test_resnet")  # same key names as resnet10t, other shapes
    path = tmp_path / "variant.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, str(path))
    with pytest.raises(ClipdoctorError, match="names agree but no shape does"):
        create_backbone("resnet10t", weights=path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ClipdoctorError, match=r"nope.pth: weights file not found"):
        create_backbone("resnet10t", weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not weights")
    with pytest.raises(ClipdoctorError, match=r"junk.safetensors: cannot read weights"):
        create_backbone("resnet10t", weights=junk)
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(ClipdoctorError, match=r"empty.pt: holds no tensors"):
        create_backbone("resnet10t", weights=empty)


# -- freezing --------------------------------------------------------------------------------
def _bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_resnet_blocks():
    backbone, _ = create_backbone("resnet10t")
    assert backbone.block_names == ["act1", "layer1", "layer2", "layer3", "layer4"]  # stem ends at act1


def test_frozen_batchnorm_does_not_drift(resnet):
    backbone = resnet[0]
    freeze(backbone, trainable_blocks=0)
    assert not any(p.requires_grad for p in backbone.parameters())
    parent = nn.Sequential(backbone)  # as inside a ClipClassifier
    before = _bn_stats(backbone)
    parent.train()
    assert parent.training and backbone.training and not backbone.model.training
    for _ in range(3):
        parent(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert _changed(before, _bn_stats(backbone)) == set()


def test_unfrozen_batchnorm_does_move(resnet):  # the check above can fail
    backbone = resnet[0]
    before = _bn_stats(backbone)
    nn.Sequential(backbone).train()(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert len(_changed(before, _bn_stats(backbone))) == len(before)


def test_trainable_blocks_leaves_only_the_last_block(resnet):
    backbone = resnet[0]
    freeze(backbone, trainable_blocks=1)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in backbone.named_parameters() if n.startswith("model.layer4.")}
    before = _bn_stats(backbone)
    nn.Sequential(backbone).train()(torch.randn(4, 3, 32, 32))
    assert backbone.model.layer4.training and not backbone.model.layer3.training
    assert {k.split(".")[1] for k in _changed(before, _bn_stats(backbone))} == {"layer4"}

    freeze(backbone, trainable_blocks=2)  # stage 2 can widen it again
    assert backbone.model.layer3[0].conv1.weight.requires_grad
    assert not backbone.model.layer2[0].conv1.weight.requires_grad
    freeze(backbone, trainable_blocks=99)  # more than there are: nothing frozen
    assert all(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert all(m.training for m in backbone.modules())


def test_vit_blocks():
    backbone, _ = create_backbone("test_vit")
    assert backbone.block_names == [f"blocks.{i}" for i in range(6)]
    freeze(backbone, trainable_blocks=1)
    trainable = {n for n, p in backbone.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("blocks.5.", "norm.")) for n in trainable)
    assert "norm.weight" in trainable and not backbone.model.pos_embed.requires_grad


def test_freeze_rejects_bad_arguments(resnet):
    with pytest.raises(ValueError, match="trainable_blocks must be >= 0"):
        freeze(resnet[0], trainable_blocks=-1)
    with pytest.raises(TypeError, match="needs a Backbone"):
        freeze(nn.Linear(2, 2))
