"""Motion inputs (issue 7): RGB differences as a second stream, feature differences before the
head. Shapes, what the difference stream sees, padding, the feature-cache key, a tiny training
run with each option."""

from __future__ import annotations

import json

import pytest
import torch

from clipdoctor.config import ModelConfig
from clipdoctor.models import build_classifier
from clipdoctor.models.motion import time_differences

K = 3


def _model(pool: str = "gap", rgb_diff: str = "shared", feature_diff: bool = False,
           head: str = "bilstm", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="test_resnet", pretrained=False, pool=pool, rgb_diff=rgb_diff,
                      feature_diff=feature_diff, head=head, proj_dim=16, hidden=16, dropout=0.0, **kw)
    return build_classifier(cfg, K).eval()


def moving_square(T: int = 6, size: int = 48, step: int = 5, reverse: bool = False) -> torch.Tensor:
    """(1, T, 3, size, size): a bright square crossing a dark textured field left to right."""
    g = torch.Generator().manual_seed(0)
    frames = (0.3 * torch.randn(1, 3, size, size, generator=g)).repeat(T, 1, 1, 1)  # (T, 3, H, W)
    for t in range(T):
        x = 4 + step * t
        frames[t, :, 16:32, x:x + 12] = 2.0
    if reverse:
        frames = frames.flip(0)
    return frames[None]  # (1, T, 3, H, W)


# ---------------------------------------------------------------------------------------------
# time_differences

def test_differences_of_consecutive_steps_with_step_zero_repeating_step_one():
    x = torch.tensor([[0.0, 1.0, 3.0, 6.0]])[..., None]  # (1, 4, 1)
    d = time_differences(x)
    assert d.squeeze().tolist() == [1.0, 1.0, 2.0, 3.0]
    assert time_differences(torch.ones(2, 1, 5)).abs().sum() == 0  # one step: nothing moved


def test_a_static_clip_has_zero_differences():
    clip = torch.randn(1, 3, 8, 8).repeat(5, 1, 1, 1)[None]  # (1, 5, 3, 8, 8), every frame the same
    assert torch.count_nonzero(time_differences(clip)) == 0


def test_no_difference_crosses_the_pad_boundary():
    x = torch.arange(12, dtype=torch.float32).view(3, 4, 1)  # steps of 1 inside every clip
    x[0, 2:] = float("nan")  # padding may hold anything, NaN included
    x[1, 1:] = 1e6
    d = time_differences(x, torch.tensor([2, 1, 4])).squeeze(-1)  # (3, 4)
    assert d[0].tolist() == [1.0, 1.0, 0.0, 0.0]  # valid steps only; padded steps are 0
    assert d[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # one valid frame: no motion observable
    assert d[2].tolist() == [1.0, 1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# the model

@pytest.mark.parametrize("pool", ["gap", "grid", "attention"])
@pytest.mark.parametrize("rgb_diff", ["off", "shared", "separate"])
def test_shapes_and_cached_path(pool, rgb_diff):
    model = _model(pool, rgb_diff, feature_diff=True)
    streams = 1 if rgb_diff == "off" else 2
    assert model.feature_dim == streams * model.pool.out_dim
    assert model.head.in_dim == 2 * 16  # feature differences double the head's input
    clips = torch.randn(2, 5, 3, 32, 32)
    with torch.no_grad():
        feats = model.frame_features(clips)
        assert feats.shape == (2, 5, model.feature_dim)
        cached = model.frozen_features(clips)
        if pool == "attention":  # a learned pool: maps cached, frames' and differences' stacked
            assert cached.shape[:3] == (2, 5, streams * model.backbone.channels)
        logits = model(clips)
        assert logits.shape == (2, K)
        torch.testing.assert_close(model.forward_cached(cached), logits)


def test_separate_stream_has_its_own_frozen_backbone():
    model = _model("grid", "separate", freeze_backbone=True)
    a = dict(model.backbone.named_parameters())
    b = dict(model.diff_backbone.named_parameters())
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    assert not any(p.requires_grad for p in b.values())
    assert any(k.startswith("diff_backbone.") for k in model.state_dict())
    assert not any(k.startswith("diff_backbone.") for k in _model("grid", "shared").state_dict())


def test_the_difference_stream_sees_order_and_direction():
    """Gap-pooled RGB features of a clip and of its frames in another order are the same set of
    vectors; the difference stream of the two is not."""
    model = _model("gap", "shared")
    D = model.stream_dim
    clip = moving_square()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        f = model.frame_features(clip)[0]  # (T, 2D)
        g = model.frame_features(clip[:, perm])[0]
        r = model.frame_features(moving_square(reverse=True))[0]
    torch.testing.assert_close(g[:, :D], f[perm, :D])  # the frames' stream: just reordered
    assert not torch.allclose(g[:, D:], f[perm, D:], atol=1e-3)  # the differences changed
    # moving right vs moving left: the same frames' features on average, different motion
    torch.testing.assert_close(r[:, :D].mean(0), f[:, :D].mean(0))
    gap = (r[:, D:].mean(0) - f[:, D:].mean(0)).norm() / f[:, D:].norm(dim=1).mean()
    assert gap > 0.05


def test_a_static_clip_gives_the_blank_difference_features():
    model = _model("grid", "shared")
    D = model.stream_dim
    static = torch.randn(1, 3, 32, 32).repeat(4, 1, 1, 1)[None]  # (1, 4, 3, 32, 32)
    with torch.no_grad():
        f = model.frame_features(static)[0, :, D:]  # (T, D): the difference stream
        blank = model.pool(model.backbone(torch.zeros(1, 3, 32, 32)))  # (1, D)
    torch.testing.assert_close(f, blank.expand_as(f))


@pytest.mark.parametrize("rgb_diff,feature_diff,head", [("shared", True, "bilstm"),
                                                        ("separate", False, "meanpool"),
                                                        ("off", True, "transformer")])
def test_padded_frames_never_change_logits(rgb_diff, feature_diff, head):
    model = _model("grid", rgb_diff, feature_diff, head=head)
    clips = torch.randn(2, 5, 3, 32, 32)
    lengths = torch.tensor([5, 3])
    other = clips.clone()
    other[1, 3:] = float("nan")
    with torch.no_grad():
        want = model(clips, lengths)
        torch.testing.assert_close(model(other, lengths), want)
        # the padded clip alone, cut to its length, gives the same logits
        torch.testing.assert_close(model(clips[1:, :3]), want[1:])


def test_cache_key_follows_the_difference_stream():
    ids = {mode: _model("grid", mode).cached_pool_id() for mode in ("off", "shared", "separate")}
    assert len(set(ids.values())) == 3 and ids["off"] == "GridPool:384"
    # feature differences are computed after the cache: the same cache serves both
    assert _model("grid", "off", feature_diff=True).cached_pool_id() == ids["off"]
    # a separate backbone's weights are part of the key
    torch.manual_seed(1)
    other = _model("grid", "separate")
    with torch.no_grad():
        next(other.diff_backbone.parameters()).add_(1.0)
    assert other.cached_pool_id() != ids["separate"]


def test_config_rejects_unknown_modes():
    from clipdoctor.config import with_overrides, RunConfig
    from clipdoctor.errors import ClipdoctorError

    with pytest.raises(ClipdoctorError, match="--rgb-diff"):
        with_overrides(RunConfig(), {"model.rgb_diff": "twice"})


# ---------------------------------------------------------------------------------------------
# tiny end-to-end training with each option (stage 1 on cached features, and end to end)

@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    from clipdoctor.data.sources import load_source
    from clipdoctor.data.synthetic import generate

    root = tmp_path_factory.mktemp("pairs")
    generate(root, clips_per_class=5, frames=6, size=32, classes=("move_left", "move_right"))
    return load_source(root)


@pytest.mark.parametrize("pool,rgb_diff,feature_diff,frozen", [
    ("grid", "off", False, True),  # first: fills the shared cache without the difference stream
    ("grid", "shared", False, True),
    ("gap", "separate", True, True),
    ("attention", "shared", False, True),
    ("gap", "shared", True, False),
])
def test_tiny_training_with_each_option(pair_data, tmp_path_factory, tmp_path, pool, rgb_diff,
                                        feature_diff, frozen):
    """One shared feature cache for every case: a cache made without the difference stream
    must never be read with it (it would fail on the width, or silently drop the stream)."""
    from clipdoctor.demo import demo_config
    from clipdoctor.training.evaluate import load_run
    from clipdoctor.training.run import train

    cache = tmp_path_factory.getbasetemp() / "motion-cache"
    config = demo_config(cache, **{"data.size": 32, "data.frame_size": 36, "data.frames": 4,
                                   "model.proj_dim": 16, "model.hidden": 16, "model.pool": pool,
                                   "model.rgb_diff": rgb_diff, "model.feature_diff": feature_diff,
                                   "model.freeze_backbone": frozen, "train.epochs": 2})
    run = train(pair_data, config, tmp_path / "run")
    assert run.metrics["epochs"] and 0 <= run.metrics["val"]["balanced_acc"] <= 1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["val"]["confusion"] == run.metrics["val"]["confusion"]
    loaded = load_run(tmp_path / "run")  # the saved config rebuilds the same model
    assert loaded.model.rgb_diff == rgb_diff and loaded.model.feature_diff == feature_diff
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x), run.model.eval()(x))
