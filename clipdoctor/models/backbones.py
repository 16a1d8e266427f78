"""Backbones: any timm model as a per-frame feature-MAP extractor, local weights, freezing.

A backbone maps images (N, 3, H, W) to a feature map (N, C, h, w). It is reached only through
`timm.create_model(name, num_classes=0, global_pool="")` and wrapped in `Backbone`, whose
forward is timm's `forward_features` brought to NCHW (token outputs of ViT-like models are
reshaped to their patch grid, class / register tokens dropped).

Freezing works in "blocks". A block is one stage of the model's timm `feature_info`: every
module from just after the previous stage up to and including this stage's module, in the
order timm registers them. Modules after the last stage (a final norm, EfficientNet's
conv_head) belong to the last block. So for
  - ResNets: 5 blocks = stem (conv1, bn1), layer1, layer2, layer3, layer4;
  - ViTs: one block per transformer block `blocks.i`; patch / position embeddings and the
    class token sit in the first, the final `norm` in the last.
Models without `feature_info` fall back to their top-level children that hold parameters.
A frozen part is kept in eval mode even when a parent calls `.train()`, so its BatchNorm
running statistics never move and its dropout stays off (a frozen backbone is a fixed
feature extractor, which is also what the feature cache assumes).
"""

from __future__ import annotations

import difflib
import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from clipdoctor.errors import ClipdoctorError
from clipdoctor.models.offline_weights import (OFFLINE, check_hub_reachable, hub_cached_file,
                                               load_package_weights, use_package_data_config)

log = logging.getLogger(__name__)

_LIST_HINT = "clipdoctor backbones PATTERN lists names"
_WEIGHTS_HINT = "give a local file with --weights FILE, or train from random weights with --no-pretrained"


@dataclass(frozen=True)
class BackboneInfo:
    """What the rest of clipdoctor needs to know about a backbone, and how its weights got there."""

    name: str
    channels: int  # C of the feature map (N, C, h, w)
    mean: tuple[float, float, float]  # input normalisation the weights expect (timm data config)
    std: tuple[float, float, float]
    input_size: tuple[int, int, int]  # (3, H, W) the weights were trained at
    missing_keys: tuple[str, ...] = ()  # backbone tensors the weights file did not provide
    unexpected_keys: tuple[str, ...] = ()  # file tensors that found no place in the backbone
    weights: str = "random"  # "random" | "hub" | "package:<pip name>" | path of the weights file


class Backbone(nn.Module):
    """A timm model whose forward returns its feature map (N, C, h, w)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.channels = int(model.num_features)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.output_fmt = str(getattr(model, "output_fmt", "NCHW"))
        self.fixed_size = _fixed_input_size(model)  # (H, W) a non-resizable model insists on
        self.block_names, self._block_of = _find_blocks(model)
        self.trainable_blocks: int | None = None  # None: never frozen
        self._frozen_modules: list[str] = []  # kept in eval mode by train()

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.fixed_size is not None and tuple(x.shape[-2:]) != self.fixed_size:
            h, w = self.fixed_size
            raise ClipdoctorError(
                f"backbone {self.name} only takes {h}x{w} images, got {x.shape[-2]}x{x.shape[-1]}; "
                f"set data.size to {h} (--size {h}) or pick a backbone that takes any size")
        f = self.model.forward_features(x)
        if f.ndim == 4 and self.output_fmt == "NHWC":
            f = f.permute(0, 3, 1, 2)  # (N, h, w, C) -> (N, C, h, w)
        elif f.ndim == 3:
            f = self._tokens_to_map(f, (x.shape[-2], x.shape[-1]))  # (N, L, C) -> (N, C, h, w)
        elif f.ndim != 4:
            raise ClipdoctorError(f"backbone {self.name} returns features of shape {tuple(f.shape)}; "
                                  "clipdoctor needs a feature map (N, C, h, w) or tokens (N, L, C)")
        if f.shape[1] != self.channels:
            raise ClipdoctorError(f"backbone {self.name} returned {f.shape[1]} channels but reports "
                                  f"num_features={self.channels}; pick another backbone")
        return f

    def _tokens_to_map(self, f: Tensor, image_hw: tuple[int, int]) -> Tensor:
        N, L, C = f.shape
        h, w = self._token_grid(L - self.num_prefix_tokens, image_hw)
        f = f[:, self.num_prefix_tokens:]  # (N, L, C) -> (N, h*w, C): drop class / register tokens
        return f.transpose(1, 2).reshape(N, C, h, w)  # (N, h*w, C) -> (N, C, h*w) -> (N, C, h, w)

    def _token_grid(self, n: int, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) patch grid behind n tokens: the patch embedding's own grid when it fits,
        else the factor pair of n whose aspect ratio is closest to the image's."""
        pe = getattr(self.model, "patch_embed", None)
        candidates = []
        if hasattr(pe, "dynamic_feat_size"):
            candidates.append(tuple(pe.dynamic_feat_size(image_hw)))
        if getattr(pe, "grid_size", None) is not None:
            candidates.append(tuple(pe.grid_size))
        for h, w in candidates:
            if h * w == n:
                return int(h), int(w)
        if n >= 1:
            want = math.log(image_hw[0] / image_hw[1])
            h = min((a for a in range(1, n + 1) if n % a == 0), key=lambda a: abs(math.log(a * a / n) - want))
            if abs(math.log(h * h / n) - want) <= math.log(2):
                return h, n // h
        raise ClipdoctorError(
            f"backbone {self.name} returns {n} patch tokens for a {image_hw[0]}x{image_hw[1]} image, "
            "which form no grid clipdoctor can recover; pick a CNN backbone")

    # -- freezing --------------------------------------------------------------------------
    def freeze(self, trainable_blocks: int = 0) -> None:
        """See `freeze`."""
        if trainable_blocks < 0:
            raise ValueError(f"trainable_blocks must be >= 0, got {trainable_blocks}")
        first = max(len(self.block_names) - trainable_blocks, 0)  # first trainable block
        for pname, p in self.model.named_parameters():
            p.requires_grad_(self._block_of[pname.rpartition(".")[0]] >= first)
        self._frozen_modules = [
            n for n, m in self.model.named_modules()
            if all(self._block_of.get(_join(n, sub), first) < first for sub, _ in m.named_modules())]
        self.trainable_blocks = trainable_blocks
        self.train(self.training)  # apply eval mode to the frozen part now

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode:
            for n in self._frozen_modules:
                self.model.get_submodule(n).eval()
        return self


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent and child else parent or child


def _find_blocks(model: nn.Module) -> tuple[list[str], dict[str, int]]:
    """Block names, and the block of every named module (see the module docstring)."""
    names = [n for n, _ in model.named_modules()]
    known = set(names)
    stages = [f.get("module") for f in (getattr(model, "feature_info", None) or [])]
    stages = [s for s in stages if isinstance(s, str) and s in known]
    if not stages:  # fallback: top-level children that hold parameters, classifier excluded
        stages = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    ends: list[int] = []
    blocks: list[str] = []
    for s in stages:
        end = max(i for i, n in enumerate(names) if n == s or n.startswith(s + "."))
        if not ends or end > ends[-1]:
            ends.append(end)
            blocks.append(s)
    block_of: dict[str, int] = {}
    k = 0
    for i, n in enumerate(names):
        while k < len(ends) - 1 and i > ends[k]:
            k += 1
        block_of[n] = k
    return blocks, block_of


def _fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    traits = getattr(model, "_traits", {}) or {}
    pe = getattr(model, "patch_embed", None)
    if "fixed_input_size" in traits:
        fixed = traits["fixed_input_size"]
    else:
        fixed = bool(getattr(pe, "strict_img_size", False)) and not getattr(model, "dynamic_img_size", False)
    if not fixed:
        return None
    size = traits.get("img_size") or getattr(pe, "img_size", None) or model.pretrained_cfg["input_size"][1:]
    return int(size[0]), int(size[1])


# -- creation --------------------------------------------------------------------------------
def list_backbones(pattern: str = "*", pretrained_only: bool = False) -> list[str]:
    """timm model names matching a wildcard pattern (with pretrained tags when pretrained_only)."""
    return timm.list_models(pattern, pretrained=pretrained_only)


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    names = timm.list_models()
    close = [n for n in sorted(names, key=len) if n.startswith(name)][:2]
    close += [n for n in difflib.get_close_matches(name, names, n=3, cutoff=0.6) if n not in close]
    found = (f"close matches: {', '.join(close[:3])}" if close
             else f"no close match among timm's {len(names)} models")
    raise ClipdoctorError(f"unknown backbone '{name}' — {found} ({_LIST_HINT})")


def _create_timm(name: str, pretrained: bool, file: str | None = None) -> nn.Module:
    """timm's model `name` without classifier or pooling; with `pretrained`, its weights from
    `file` (a cached copy of the hub's: no network) or else from the hub."""
    kwargs: dict = dict(num_classes=0, global_pool="")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        kwargs["dynamic_img_size"] = True  # ViTs / Swins: take any data.size, not only 224
    if pretrained and file is not None:  # custom_load: a foreign format (.npz) the model reads
        kwargs["pretrained_cfg_overlay"] = dict(file=file, custom_load=bool(cfg and cfg.custom_load))
    while True:
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as e:  # this family has no dynamic_img_size
            if kwargs.pop("dynamic_img_size", None) is None:
                raise _create_error(name, pretrained, e) from e
        except AssertionError as e:  # some models refuse global_pool="" (forward_features is unaffected)
            if kwargs.pop("global_pool", None) is None:
                raise _create_error(name, pretrained, e) from e
        except Exception as e:
            raise _create_error(name, pretrained, e) from e


def _create_error(name: str, pretrained: bool, e: BaseException) -> ClipdoctorError:
    why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    if pretrained:
        return ClipdoctorError(f"cannot load timm's pretrained weights for '{name}' ({why}); {_WEIGHTS_HINT}")
    return ClipdoctorError(f"cannot build backbone '{name}' with timm ({why}); pick another ({_LIST_HINT})")


def create_backbone(name: str, *, pretrained: bool = False,
                    weights: str | Path | None = None) -> tuple[Backbone, BackboneInfo]:
    """A timm backbone returning feature maps, and its BackboneInfo.

    `weights` (a safetensors or torch state-dict file) wins over `pretrained`: the hub is not
    contacted when a file is given. Pretrained weights of the names in offline_weights.OFFLINE
    come from their pip package (never the hub); other names' come from the local hub cache
    when there, else from the hub, after a quick network test that fails in seconds rather
    than after huggingface_hub's retries.

    For the OFFLINE names, mean / std / input_size are the package weights' whatever the
    weights: evaluate / predict rebuild a run's model without pretrained weights."""
    _check_name(name)
    use_pretrained = pretrained and weights is None
    from_package = use_pretrained and name in OFFLINE
    use_hub = use_pretrained and not from_package
    if use_hub and not timm.models.is_model_pretrained(name):
        raise ClipdoctorError(f"timm has no pretrained weights for '{name}'; {_WEIGHTS_HINT}")
    cached = hub_cached_file(name) if use_hub else None
    if use_hub and cached is None:
        check_hub_reachable(name)
    backbone = Backbone(_create_timm(name, use_hub, cached), name)
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    source = "hub" if use_hub else "random"
    if from_package:
        source = load_package_weights(backbone.model, name)
    if weights is not None:
        missing, unexpected = load_weights(backbone.model, weights, name)
        source = str(weights)
    if name in OFFLINE:
        use_package_data_config(backbone.model, name)
    dc = timm.data.resolve_model_data_config(backbone.model)
    info = BackboneInfo(
        name=name, channels=backbone.channels,
        mean=tuple(float(v) for v in dc["mean"]), std=tuple(float(v) for v in dc["std"]),
        input_size=tuple(int(v) for v in dc["input_size"]),
        missing_keys=missing, unexpected_keys=unexpected, weights=source)
    return backbone, info


def freeze(backbone: nn.Module, trainable_blocks: int = 0) -> None:
    """Freeze a backbone except its last `trainable_blocks` blocks (module docstring: what a
    block is). The frozen part stays in eval mode through later `.train()` calls. Calling it
    again re-decides every parameter, so freeze(b, 1) after freeze(b, 0) unfreezes one block."""
    if not isinstance(backbone, Backbone):
        raise TypeError(f"freeze needs a Backbone from create_backbone, got {type(backbone).__name__}")
    backbone.freeze(trainable_blocks)


# -- weights files ---------------------------------------------------------------------------
def read_tensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file (safetensors or a torch.save'd state dict or checkpoint),
    by name; ClipdoctorError with what to do when the file is missing or holds none."""
    if not path.is_file():
        raise ClipdoctorError(f"{path}: weights file not found; give an existing .safetensors / .pt file "
                              "to --weights, or drop it to use --pretrained / --no-pretrained")
    import safetensors.torch

    def st() -> object:
        return safetensors.torch.load_file(str(path), device="cpu")

    def pt() -> object:
        return torch.load(path, map_location="cpu", weights_only=True)

    readers = (st, pt) if path.suffix == ".safetensors" else (pt, st)
    first_error: Exception | None = None
    obj = None
    for read in readers:
        try:
            obj = read()
            break
        except Exception as e:  # noqa: BLE001 - any unreadable file becomes one clear line
            first_error = first_error or e
    else:
        why = f"{type(first_error).__name__}: {(str(first_error).strip().splitlines() or [''])[0][:200]}"
        raise ClipdoctorError(f"{path}: cannot read weights ({why}); expected a safetensors file or a "
                              "state dict saved with torch.save(model.state_dict(), FILE)")
    if isinstance(obj, Mapping) and "clipdoctor_frozen" in obj:  # train.module.FROZEN_KEY
        raise ClipdoctorError(f"{path}: a stage-1 epoch checkpoint, which leaves the frozen "
                              "backbone out; use the run's checkpoints/best.ckpt")
    for key in ("state_dict", "model"):  # checkpoint dicts: Lightning, timm train scripts, ...
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise ClipdoctorError(f"{path}: holds no tensors ({type(obj).__name__}); expected a state dict "
                              "saved with torch.save(model.state_dict(), FILE)")
    return tensors


def best_prefix(keys: list[str], model_keys: set[str]) -> tuple[str, int]:
    """The prefix ("", "module.", "model.", "backbone.model.", ...) whose removal makes most
    file keys name backbone tensors, and how many it makes match."""
    counts: Counter[str] = Counter()
    for k in keys:
        i = -1
        while True:
            if k[i + 1:] in model_keys:
                counts[k[:i + 1]] += 1
            i = k.find(".", i + 1)
            if i == -1:
                break
    if not counts:
        return "", 0
    prefix, n = min(counts.items(), key=lambda kv: (-kv[1], len(kv[0])))
    return prefix, n


def _counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def load_weights(model: nn.Module, path: str | Path, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Load a weights file into a timm model (strict=False); returns (missing, unexpected) keys.

    Prefixes added by wrappers are stripped, classifier tensors the headless backbone has no
    place for are dropped, and tensors whose shape differs count as both missing and
    unexpected. A file of which no tensor fits is an error: it is another model's."""
    path = Path(path)
    tensors = read_tensors(path)
    target = model.state_dict()
    prefix, _ = best_prefix([k for k in tensors if not _counter(k)], set(target))
    outside = [k for k in tensors if not k.startswith(prefix)]
    sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    dropped = [k for k in sd if k not in target and any(k == h or k.startswith(h + ".") for h in heads)]
    for k in dropped:
        del sd[k]
    named = [k for k in sd if k in target and not _counter(k)]  # step counters prove nothing
    mismatched = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    if not named:
        raise ClipdoctorError(f"none of the {len(tensors)} keys in {path} match backbone {name} "
                              f"(e.g. '{next(iter(tensors))}'); is it a checkpoint of another model?")
    if set(named) <= set(mismatched):
        k = named[0]
        raise ClipdoctorError(
            f"none of the {len(tensors)} keys in {path} match backbone {name}: names agree but no shape "
            f"does (e.g. {k}: file {tuple(sd[k].shape)}, model {tuple(target[k].shape)}); "
            "is it a checkpoint of another model or variant?")
    for k in mismatched:
        del sd[k]
    result = model.load_state_dict(sd, strict=False)
    missing = tuple(k for k in result.missing_keys if not _counter(k))
    unexpected = tuple(sorted(set(result.unexpected_keys) | {prefix + k for k in mismatched}))
    loaded = len(sd) - len(result.unexpected_keys)
    if missing or unexpected:
        log.warning("weights %s: loaded %d tensors into %s; %d missing (e.g. %s), %d unexpected "
                    "(e.g. %s), %d of them shape mismatches", path, loaded, name, len(missing),
                    ", ".join(missing[:3]) or "-", len(unexpected), ", ".join(unexpected[:3]) or "-",
                    len(mismatched))
    else:
        log.info("weights %s: loaded all %d tensors into %s", path, loaded, name)
    if outside or dropped:
        log.info("weights %s: ignored %d tensors outside prefix '%s' and %d classifier tensors",
                 path, len(outside), prefix, len(dropped))
    return missing, unexpected
