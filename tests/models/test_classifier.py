"""ClipClassifier: shapes through every pool and head, batch/time order, padding, the config."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from clipdoctor.config import ModelConfig
from clipdoctor.errors import ClipdoctorError
from clipdoctor.models import (HEADS, POOLS, Backbone, ClipClassifier, build_classifier,
                               create_backbone, make_head, make_pool)

K = 3


@pytest.fixture
def resnet():
    """(Backbone, BackboneInfo) of resnet10t with random weights, seeded: same numbers every run.
    (Not in a tests/models/conftest.py: that would shadow the `conftest` tests/ imports from.)"""
    torch.manual_seed(0)
    return create_backbone("resnet10t", pretrained=False)


def _clips(B: int = 2, T: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _model(resnet, pool: str = "grid", head: str = "bilstm", dropout: float = 0.0) -> ClipClassifier:
    backbone, info = resnet
    torch.manual_seed(0)
    return ClipClassifier(backbone, make_pool(pool, info.channels), make_head(head, 16, K, hidden=16),
                          proj_dim=16, dropout=dropout, info=info)


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_every_pool(resnet, pool):
    model = _model(resnet, pool=pool).eval()
    clips = _clips()
    with torch.no_grad():
        feats = model.frame_features(clips)
        assert feats.shape == (2, 4, model.pool.out_dim)
        assert model(clips).shape == (2, K)
        assert model(clips, torch.tensor([4, 2])).shape == (2, K)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head(resnet, head):
    model = _model(resnet, head=head).eval()
    clips = _clips()
    with torch.no_grad():
        logits = model(clips)
        assert logits.shape == (2, K)
        torch.testing.assert_close(model.forward_features(model.frame_features(clips)), logits)
        assert model(clips, torch.tensor([1, 3])).shape == (2, K)


def test_frames_keep_their_clip_and_step(resnet):
    """frame_features[b, t] is frame (b, t) alone: no batch/time mix-up in the reshapes."""
    model = _model(resnet).eval()
    clips = _clips(B=3, T=4)
    with torch.no_grad():
        feats = model.frame_features(clips)
        for b, t in [(0, 0), (0, 3), (1, 2), (2, 1)]:
            alone = model.pool(model.backbone(clips[b, t:t + 1]))[0]
            torch.testing.assert_close(feats[b, t], alone, rtol=1e-4, atol=1e-5)
        # the bug this guards against: (B*T, D) viewed back as (T, B, D)
        flat = model.pool(model.backbone(clips.reshape(12, 3, 32, 32)))
        swapped = flat.view(4, 3, -1).transpose(0, 1)
        assert not torch.allclose(swapped, feats, atol=1e-3)


def test_changing_one_clip_changes_only_its_logits(resnet):
    model = _model(resnet).eval()
    clips = _clips(B=3)
    other = clips.clone()
    other[1] = torch.randn_like(other[1])
    with torch.no_grad():
        a, b = model(clips), model(other)
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]], rtol=0, atol=1e-5)
    assert (a[1] - b[1]).abs().max() > 1e-4


@pytest.mark.parametrize("head", sorted(HEADS))
def test_padded_frames_never_change_logits(resnet, head):
    model = _model(resnet, head=head).eval()
    clips, lengths = _clips(B=2, T=4), torch.tensor([4, 2])
    padded = torch.cat([clips, torch.randn(2, 3, 3, 32, 32) * 50], dim=1)  # T = 7
    padded[1, 2:4] = 7.0
    with torch.no_grad():
        torch.testing.assert_close(model(padded, lengths), model(clips, lengths), rtol=0, atol=1e-5)


def test_padded_frames_skip_a_training_backbone(resnet):
    """In train mode BatchNorm uses batch statistics: padded frames must not enter them."""
    model = _model(resnet).train()
    clips, lengths = _clips(B=2, T=4), torch.tensor([4, 2])
    noisy = clips.clone()
    noisy[1, 2:] = torch.randn(2, 3, 32, 32) * 100
    a = model.frame_features(clips, lengths)
    b = model.frame_features(noisy, lengths)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (a[1, 2:] == 0).all()


def test_bad_inputs(resnet):
    model = _model(resnet)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        model(torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"features must be \(B, T, 2048\)"):
        model.forward_features(torch.randn(2, 4, 7))
    with pytest.raises(ValueError, match="proj_dim"):
        ClipClassifier(resnet[0], make_pool("gap", 512), make_head("lstm", 8, K), proj_dim=16, dropout=0.0)


# -- build_classifier ------------------------------------------------------------------------
def _config(**kw) -> ModelConfig:
    base = dict(backbone="resnet10t", pretrained=False, proj_dim=16, hidden=8)
    return ModelConfig(**(base | kw))


def test_build_respects_the_config():
    cfg = _config(pool="grid", grid=3, head="gru", layers=2, dropout=0.1, freeze_backbone=False)
    model = build_classifier(cfg, num_classes=5)
    assert isinstance(model.backbone, Backbone) and model.backbone.name == "resnet10t"
    assert model.pool.out_dim == 512 * 9 and model.feature_dim == 512 * 9
    assert model.proj[0].in_features == 512 * 9 and model.proj[0].out_features == 16
    assert model.proj[2].p == 0.1
    assert isinstance(model.head.rnn, nn.GRU) and model.head.rnn.hidden_size == 8
    assert model.head.rnn.num_layers == 2 and model.head.rnn.dropout == 0.1
    assert model.num_classes == 5 and model.info.weights == "random" and model.info.channels == 512
    assert all(p.requires_grad for p in model.parameters())
    assert model(_clips()).shape == (2, 5)


def test_build_frozen_keeps_backbone_statistics():
    model = build_classifier(_config(freeze_backbone=True, head="meanpool"), num_classes=K)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    model.train()
    loss = model(_clips() * 3).sum()
    loss.backward()
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in stats.items())
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.fc[0].weight.grad is not None


def test_build_with_weights_file(tmp_path, resnet):
    path = tmp_path / "w.pth"
    torch.save(resnet[0].state_dict(), path)
    model = build_classifier(_config(weights=path, pretrained=True), num_classes=K)
    assert model.info.weights == str(path) and model.info.missing_keys == ()
    torch.testing.assert_close(model.backbone.model.conv1[0].weight, resnet[0].model.conv1[0].weight)


def test_build_pretrained_offline_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(ClipdoctorError, match="--no-pretrained"):
        build_classifier(ModelConfig(), num_classes=K)  # the default config asks for hub weights


# -- stage 1: cached features ----------------------------------------------------------------
@pytest.mark.parametrize("pool,cached_id,cached_shape", [
    ("gap", "GapPool:512", (2, 4, 512)), ("grid", "GridPool:2048", (2, 4, 2048)),
    ("attention", "map", (2, 4, 512, 2, 2))])
def test_cached_features_give_the_same_logits(resnet, pool, cached_id, cached_shape):
    model = _model(resnet, pool=pool).eval()
    clips, lengths = _clips(size=64), torch.tensor([4, 3])
    assert model.cached_pool_id() == cached_id
    with torch.no_grad():
        cached = model.frozen_features(clips)
        assert cached.shape == cached_shape
        torch.testing.assert_close(model.forward_cached(cached), model(clips), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.forward_cached(model.frozen_features(clips, lengths), lengths),
                                   model(clips, lengths), rtol=1e-4, atol=1e-5)


def test_a_learned_pool_keeps_learning_on_cached_maps(resnet):
    model = _model(resnet, pool="attention")
    maps = model.frozen_features(_clips(size=64)).detach()  # 2x2 maps: more than one place to attend
    model.forward_cached(maps).sum().backward()
    assert model.pool.score.weight.grad is not None and model.pool.score.weight.grad.abs().sum() > 0
