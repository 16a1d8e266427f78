"""Typed run configuration (pydantic), validated at the edge; YAML in and out.

Each default carries a comment saying why it is what it is. A saved config is complete:
`clipdoctor train DATA --config RUN/config.yaml` repeats the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clipdoctor.errors import ClipdoctorError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    """Clip augmentation; one random draw is shared by every frame of a clip."""

    scale: tuple[float, float] = (0.6, 1.0)  # RandomResizedCrop area: keeps most of the motion in view
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect: mild stretch only
    degrees: float = Field(5.0, ge=0, le=45)  # small rotations only: big ones change the motion
    translate: float = Field(0.05, ge=0, le=0.5)
    brightness: float = Field(0.2, ge=0)
    contrast: float = Field(0.2, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.02, ge=0, le=0.5)
    hflip: bool = False  # off: a horizontal flip turns "moving left" into "moving right"
    per_frame: bool = False  # True is a planted fault (new draw per frame), never a remedy


class DataConfig(_Strict):
    """How clips are read, sampled, cached and augmented."""

    format: str | None = None  # None: detect the layout (DESIGN §2)
    fold: int = Field(1, ge=1)  # UCF101 / HMDB51 official split number
    split_seed: int = 0  # seed of the stratified split made when the layout has none
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    strict: bool = False  # True: any unreadable file stops the run instead of being skipped
    frames: int = Field(8, ge=1, le=256)  # T: 8 uniform segments cover an action (TSN)
    sampler: Literal["uniform", "dense"] = "uniform"  # uniform: spans the whole clip
    stride: int = Field(2, ge=1)  # dense sampler: frames between samples at evaluation
    max_stride: int = Field(4, ge=1)  # dense sampler: largest random stride in training
    short: Literal["repeat", "pad"] = "repeat"  # clips shorter than T: repeat frames, or pad + mask
    frame_size: int = Field(128, ge=16)  # cached frames are frame_size^2: a margin for random crops
    size: int = Field(112, ge=16)  # model input: 112 px is the usual CPU-friendly video size
    cache_dir: Path | None = None  # None: $CLIPDOCTOR_CACHE or ~/.cache/clipdoctor
    cache: bool = True  # False decodes the sampled frames of every clip on every epoch
    cache_frames: int = Field(32, ge=1)  # frames kept per clip in the cache (uniform over it)
    eval_clips: int = Field(1, ge=1)  # K clips per video at evaluation, scores averaged
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(0, ge=0)  # 0: no worker processes; 2 cores are busy with the model
    augment: AugmentConfig = AugmentConfig()


class RunConfig(_Strict):
    """A whole run. Model and training sections are added by their stages."""

    data: DataConfig = DataConfig()
    seed: int = 0


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run config; a bad file or field is one clear error line."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ClipdoctorError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ClipdoctorError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ClipdoctorError(f"{path}: {where}: {err['msg']} (see clipdoctor train --help)") from None


def save_config(config: RunConfig, path: str | Path) -> None:
    from clipdoctor.data.cache import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
