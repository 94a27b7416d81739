"""Dataset configs: pydantic models for data, model, training, prediction and segmentation.

One TOML file per dataset (see `configs/`). Shapes are given once, in voxels for the
network input, and everything else (output shape, context, sizes in nm) is derived from
the network's own shape arithmetic. Relative paths in a config file are relative to the
file's directory.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from .io.layout import LABELS_MASK, MITO_IDS, NEURON_IDS, RAW
from .model.unet_geometry import UnetGeometry, make_geometry

Vec3 = tuple[int, int, int]
AXES = ("z", "y", "x")
# the shipped configs: configs/ of a source checkout, installed with the package as lsdflow.configs
CONFIG_DIR = Path(str(importlib.resources.files("lsdflow.configs")))


class ConfigError(ValueError):
    """A config that cannot be used; the message names file, field, value and what fits."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _positive(name: str, value: tuple[int, ...]) -> tuple[int, ...]:
    if any(v <= 0 for v in value):
        raise ValueError(f"{name} must be positive in every axis, got {tuple(value)}")
    return value


class VolumeRef(_Strict):
    """A Zarr volume, or a region of one: `"path"` or `{path, roi_offset_nm, roi_shape_nm}`.

    The region limits where labels are used: trained on, or scored. Raw data outside it
    still serves as the network's context. Held-out regions of one acquisition (e.g. a
    validation block next to the training block) are written this way."""

    path: Path
    roi_offset_nm: Vec3 | None = None
    roi_shape_nm: Vec3 | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        value = {"path": value} if isinstance(value, (str, os.PathLike)) else value
        if isinstance(value, dict) and not str(value.get("path", "")).strip():
            raise ValueError("empty path (expected a Zarr container)")
        return value

    @model_validator(mode="after")
    def _check_roi(self) -> VolumeRef:
        if (self.roi_offset_nm is None) != (self.roi_shape_nm is None):
            raise ValueError(f"{self.path}: give both roi_offset_nm and roi_shape_nm, or neither")
        if self.roi_shape_nm is not None:
            _positive("roi_shape_nm", self.roi_shape_nm)
        return self

    @model_serializer(mode="wrap")
    def _as_path_when_whole(self, handler):
        # a whole volume is written as its path: configs (and their fingerprints) stay as before
        return str(self.path) if self.roi_shape_nm is None else handler(self)

    @property
    def roi(self):
        """The region as a funlib Roi, or None for the whole volume."""
        if self.roi_shape_nm is None:
            return None
        from funlib.geometry import Roi

        return Roi(self.roi_offset_nm, self.roi_shape_nm)

    def __str__(self) -> str:
        if self.roi_shape_nm is None:
            return str(self.path)
        return f"{self.path}[offset {tuple(self.roi_offset_nm)} nm, shape {tuple(self.roi_shape_nm)} nm]"


class DataConfig(_Strict):
    """Where the Zarr volumes are and how their datasets are named (CREMI layout)."""

    voxel_size: Vec3 = Field(description="voxel size in nm (z, y, x) the data must have")
    train: list[VolumeRef] = Field(default_factory=list)
    validation: list[VolumeRef] = Field(default_factory=list)
    test: list[VolumeRef] = Field(default_factory=list)
    raw_dataset: str = RAW
    labels_dataset: str = NEURON_IDS
    labels_mask_dataset: str = LABELS_MASK
    mito_dataset: str = MITO_IDS

    @field_validator("voxel_size")
    @classmethod
    def _check_voxel_size(cls, v: Vec3) -> Vec3:
        return _positive("voxel_size", v)

    @model_validator(mode="after")
    def _check_regions_on_grid(self) -> DataConfig:
        for split in ("train", "validation", "test"):
            for volume in getattr(self, split):
                if volume.roi_shape_nm is None:
                    continue
                if any(v % s for v, s in zip((*volume.roi_offset_nm, *volume.roi_shape_nm), self.voxel_size * 2)):
                    raise ValueError(
                        f"data.{split}: {volume}: region not on the voxel grid "
                        f"(offset and shape must be multiples of voxel_size {tuple(self.voxel_size)} nm)"
                    )
        return self

    @property
    def anisotropy(self) -> float:
        return max(self.voxel_size) / min(self.voxel_size)

    @property
    def is_anisotropic(self) -> bool:
        """Anisotropic data (e.g. serial-section TEM) gets section-wise augmentation."""
        return self.anisotropy >= 1.5


class ModelConfig(_Strict):
    """The U-Net and its heads. `input_shape` is in voxels; the output shape is derived."""

    kind: Literal["mtlsd", "lsd", "aff", "mtlsd_mito"] = "mtlsd"
    num_fmaps: int = Field(12, gt=0)
    fmap_inc_factor: int = Field(5, gt=0)
    downsample_factors: list[Vec3] = [(2, 2, 2), (2, 2, 2), (3, 3, 3)]
    kernel_size_down: list[list[Vec3]] | None = None
    kernel_size_up: list[list[Vec3]] | None = None
    constant_upsample: bool = True
    input_shape: Vec3
    affinity_neighborhood: list[Vec3] = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]

    @field_validator("input_shape")
    @classmethod
    def _check_input_shape(cls, input_shape: Vec3, info: ValidationInfo) -> Vec3:
        """The input must survive every valid convolution and divide at every downsampling."""
        _positive("input_shape", input_shape)
        if "downsample_factors" not in info.data:
            return input_shape  # that field's own error is reported
        geometry = make_geometry(
            info.data["downsample_factors"],
            info.data.get("kernel_size_down"),
            info.data.get("kernel_size_up"),
        )
        problems = []
        for axis, size in enumerate(input_shape):
            _, reason = geometry.axis_output_size(axis, size)
            if reason is not None:
                nearest = geometry.nearest_valid_sizes(axis, size)
                problems.append(
                    f"{AXES[axis]}={size} does not fit the downsampling ({reason}); "
                    f"nearest valid {AXES[axis]} sizes: {nearest}"
                )
        if problems:
            raise ValueError(f"{tuple(input_shape)} is invalid: " + "; ".join(problems))
        return input_shape

    @field_validator("kernel_size_up")
    @classmethod
    def _check_kernel_levels(cls, up, info: ValidationInfo):
        if "downsample_factors" in info.data:
            make_geometry(info.data["downsample_factors"], info.data.get("kernel_size_down"), up)
        return up

    @property
    def geometry(self) -> UnetGeometry:
        return make_geometry(self.downsample_factors, self.kernel_size_down, self.kernel_size_up)

    @property
    def output_shape(self) -> Vec3:
        return self.geometry.output_shape(self.input_shape)  # type: ignore[return-value]

    @property
    def context(self) -> Vec3:
        """Voxels of input on each side of the output (input = output + 2 * context)."""
        return tuple((i - o) // 2 for i, o in zip(self.input_shape, self.output_shape))  # type: ignore[return-value]

    @property
    def outputs(self) -> tuple[str, ...]:
        return {
            "mtlsd": ("lsds", "affs"),
            "lsd": ("lsds",),
            "aff": ("affs",),
            "mtlsd_mito": ("lsds", "affs", "mito_affs"),
        }[self.kind]


class AugmentConfig(_Strict):
    """Augmentations in nm; unset values are derived from the voxel size (see `resolved`)."""

    elastic: bool = True
    control_point_spacing_nm: Vec3 | None = None
    jitter_sigma_nm: tuple[float, float, float] | None = None
    prob_slip: float | None = None
    prob_shift: float | None = None
    max_misalign_nm: int | None = None
    subsample: int = 8
    transpose_axes: list[int] | None = None
    intensity_scale: tuple[float, float] = (0.9, 1.1)
    intensity_shift: tuple[float, float] = (-0.1, 0.1)
    blur_sigma_nm: tuple[float, float] = Field(
        (0.0, 0.0), description="Gaussian blur of the raw data, sigma drawn per batch in this range (nm; within "
        "sections for anisotropic data); (0, 0): none. For acquisitions softer than the training data")
    blur_probability: float = Field(0.5, ge=0, le=1, description="share of batches blurred")

    def resolved(self, data: DataConfig) -> AugmentConfig:
        """Fill in resolution-aware defaults: anisotropic data is deformed and transposed
        only within sections and gets section slips/shifts (as in the LSD paper's CREMI
        setup); isotropic data is deformed and transposed in 3D. Rotations are always
        within sections (gunpowder's ElasticAugment rotates the y/x plane)."""
        vs = data.voxel_size
        fine = min(vs)
        aniso = data.is_anisotropic
        updates: dict[str, Any] = {}
        if self.control_point_spacing_nm is None:
            updates["control_point_spacing_nm"] = (
                (vs[0] * 4, fine * 40, fine * 40) if aniso else (fine * 40,) * 3
            )
        if self.jitter_sigma_nm is None:
            updates["jitter_sigma_nm"] = (0.0, fine * 2.0, fine * 2.0) if aniso else (fine * 2.0,) * 3
        if self.prob_slip is None:
            updates["prob_slip"] = 0.05 if aniso else 0.0
        if self.prob_shift is None:
            updates["prob_shift"] = 0.05 if aniso else 0.0
        if self.max_misalign_nm is None:
            updates["max_misalign_nm"] = fine * 10 if aniso else 0
        if self.transpose_axes is None:
            updates["transpose_axes"] = [1, 2] if aniso else [0, 1, 2]
        return self.model_copy(update=updates)


class TrainingConfig(_Strict):
    iterations: int = Field(100000, gt=0)
    batch_size: int = Field(1, gt=0)
    learning_rate: float = Field(0.5e-4, gt=0)
    save_every: int = Field(1000, gt=0)
    log_every: int = Field(10, gt=0)
    lsd_sigma_nm: float = Field(80.0, gt=0)
    lsd_downsample: int = Field(2, gt=0)
    loss_weights: dict[str, float] = {"lsds": 1.0, "affs": 1.0, "mito_affs": 1.0}
    # > 0: a request lying wholly in the padding crashes gunpowder 1.4's Pad
    min_masked: float = Field(0.5, gt=0, le=1)
    grow_boundary_steps: int = Field(1, ge=0)
    balance_affinities: bool = True
    precache_size: int = Field(8, gt=0)
    precache_workers: int = Field(2, gt=0)
    seed: int | None = 42
    augment: AugmentConfig = AugmentConfig()


class PredictionConfig(_Strict):
    model: str | None = Field(
        None, description="registered model to predict with, e.g. models:/mtlsd-gala@champion"
    )
    checkpoint: Path | None = Field(None, description="model file used when no registered model is found")
    input_shape: Vec3 | None = Field(
        None,
        description="network input for prediction (voxels); larger than in training wastes "
        "less context per output voxel. Default: model.input_shape",
    )
    output_dtype: Literal["uint8", "float32"] = "uint8"
    batch_size: int = Field(1, gt=0)
    test_time_augmentation: bool = Field(
        False, description="average the predictions of the 8 mirrorings of the input (8x the compute)"
    )
    normalization: Literal["zscore", "match_training"] = Field(
        "zscore", description="raw intensities to network input: z-scored per volume, or first matched to the "
        "intensity distribution of the model's training data (histogram matching; core/io/intensity.py)"
    )

    @field_validator("model")
    @classmethod
    def _registered_model_uri(cls, value: str | None) -> str | None:
        # a file here was silently replaced by `checkpoint` when the registry lookup failed
        if value is not None and not value.startswith("models:/"):
            raise ValueError(f"{value!r} is not a registered model (models:/NAME@ALIAS or models:/NAME/VERSION); "
                             "a model file goes in prediction.checkpoint")
        return value


class SegmentationConfig(_Strict):
    thresholds: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5], min_length=1)
    merge_function: str = "hist_quant_50"
    fragments_in_xy: bool | None = None
    min_seed_distance: int = 10
    filter_fragments: float = Field(0.0, ge=0, le=1, description="drop fragments with a lower mean affinity")
    threshold_criterion: Literal["validation", "affinity_disagreement", "lsd_disagreement"] = Field(
        "validation",
        description="how `segment` / `process-acquisition` choose a threshold when none is given: the model's "
        "best threshold on validation data, or a label-free criterion computed on the acquisition itself "
        "(every configured threshold is segmented, the one that best explains the predictions is chosen)")
    criterion_max_voxels: int = Field(128**3, gt=0, description="criteria are computed on a central crop this large")
    quality_max_voxels: int = Field(
        96**3, ge=0, description="the label-free quality estimate of `process-acquisition` (core/segment/quality_estimate.py) "
        "is computed on a central crop this large (0: no estimate)")


class BlockwiseConfig(_Strict):
    """Large volumes with daisy: block geometry in nm (so it means the same at any
    resolution), workers, retries and where the region graph lives."""

    block_size_nm: Vec3 | None = Field(
        None, description="segmentation write block in nm; default 128 voxels per axis"
    )
    fragments_context_nm: Vec3 | None = Field(
        None,
        description="read margin per side for the fragments' watershed; default 32 voxels per axis "
        "(about a fragment's radius: less and fragments cut by block faces stay apart, docs/blockwise.md)",
    )
    prediction_tiles: Vec3 = Field(
        (1, 1, 1), description="prediction block = this many network output tiles per axis"
    )
    workers: int = Field(2, gt=0)
    retries: int = Field(2, ge=0)
    block_timeout_s: float = Field(600.0, gt=0)
    launcher: str | None = Field(
        None,
        description="shell template starting one worker on a cluster, with {command}; "
        "e.g. 'sbatch --wait --gres=gpu:1 --wrap {command}'. Default: local processes",
    )
    graph: str | None = Field(
        None, description="graph store URL; default sqlite:///<volume>.graph.db beside the Zarr"
    )
    mask_dataset: str | None = Field(
        None, description="prediction skips blocks where this mask dataset is all zero"
    )

    @field_validator("graph")
    @classmethod
    def _no_password(cls, url: str | None) -> str | None:
        from urllib.parse import urlsplit

        if url and urlsplit(url).password is not None:
            raise ValueError(
                "a password in the graph URL would be kept in configs, run parameters and logs; give it as "
                "LSDFLOW_MONGODB_USER / LSDFLOW_MONGODB_PASSWORD in the environment (or a Prefect Secret block)"
            )
        return url


class LsdflowConfig(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    source: Path | None = Field(None, description="the file this config was read from")
    workspace: Path | None = Field(None, description="where checkpoints and outputs go")
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig = TrainingConfig()
    prediction: PredictionConfig = PredictionConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    blockwise: BlockwiseConfig = BlockwiseConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> LsdflowConfig:
        shape = self.prediction.input_shape
        if shape is not None:
            geometry = self.model.geometry
            for axis, size in enumerate(shape):
                if geometry.axis_output_size(axis, size)[1] is not None:
                    raise ValueError(
                        f"prediction.input_shape {tuple(shape)}: {AXES[axis]}={size} does not fit "
                        f"the network; nearest valid {AXES[axis]} sizes: "
                        f"{geometry.nearest_valid_sizes(axis, size)}"
                    )
        vs = self.data.voxel_size
        for name in ("block_size_nm", "fragments_context_nm"):
            value = getattr(self.blockwise, name)
            if value is not None and any(x % v or x < 0 for x, v in zip(value, vs)):
                raise ValueError(
                    f"blockwise.{name} {tuple(value)} must be a multiple of data.voxel_size {tuple(vs)}"
                )
        if self.blockwise.block_size_nm is not None and 0 in self.blockwise.block_size_nm:
            raise ValueError("blockwise.block_size_nm must be positive in every axis")
        names = self.model.outputs
        missing = [n for n in names if n not in self.training.loss_weights]
        if missing:
            raise ValueError(
                f"training.loss_weights has no weight for {missing} (model.kind = "
                f"{self.model.kind!r} outputs {list(names)})"
            )
        return self

    @property
    def prediction_shapes(self) -> tuple[Vec3, Vec3]:
        """(input, output) shape in voxels used for prediction."""
        shape = self.prediction.input_shape or self.model.input_shape
        return shape, self.model.geometry.output_shape(shape)  # type: ignore[return-value]

    def fragments_in_xy(self, segmentation: SegmentationConfig | None = None) -> bool:
        """Fragments per section: as `segmentation` (default the config's) says, else on for
        anisotropic data."""
        seg = segmentation or self.segmentation
        return bool(seg.fragments_in_xy) if seg.fragments_in_xy is not None else self.data.is_anisotropic

    def with_model(self, model: ModelConfig) -> LsdflowConfig:
        """This config with another network (a model file's own), keeping the prediction
        input shape only where it fits that network."""
        if model == self.model:
            return self
        prediction = self.prediction
        shape = prediction.input_shape
        if shape is not None and any(
            model.geometry.axis_output_size(axis, size)[1] is not None for axis, size in enumerate(shape)
        ):
            prediction = prediction.model_copy(update={"input_shape": None})
        return self.model_copy(update={"model": model, "prediction": prediction})

    @property
    def segmentation_block_nm(self) -> Vec3:
        """Write block in nm of the segmentation stages."""
        return tuple(self.blockwise.block_size_nm or (128 * v for v in self.data.voxel_size))  # type: ignore

    @property
    def fragments_context_nm(self) -> Vec3:
        """Context of the fragments' watershed per side, in nm."""
        vs = self.data.voxel_size
        return tuple(self.blockwise.fragments_context_nm or tuple(32 * v for v in vs))  # type: ignore[return-value]

    @property
    def augment(self) -> AugmentConfig:
        return self.training.augment.resolved(self.data)

    @property
    def checkpoint_dir(self) -> Path:
        return self.resolved_workspace / "checkpoints"

    @property
    def resolved_workspace(self) -> Path:
        return self.workspace if self.workspace is not None else Path.cwd() / "workspace" / self.name

    def derived(self) -> dict[str, Any]:
        """Shapes derived from the network, in voxels and nm, for display and checks."""
        vs = self.data.voxel_size
        m = self.model
        nm = lambda shape: tuple(s * v for s, v in zip(shape, vs))  # noqa: E731
        return {
            "voxel_size_nm": vs,
            "anisotropic": self.data.is_anisotropic,
            "input_shape_voxels": m.input_shape,
            "output_shape_voxels": m.output_shape,
            "context_voxels": m.context,
            "input_size_nm": nm(m.input_shape),
            "output_size_nm": nm(m.output_shape),
            "context_nm": nm(m.context),
            "lsd_sigma_voxels": tuple(self.training.lsd_sigma_nm / v for v in vs),
        }

    def fingerprint(self) -> str:
        """Stable hash of everything but where the config came from."""
        payload = self.model_dump(mode="json", exclude={"source", "workspace", "description"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(config)"
        msg = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        given_txt = "" if isinstance(given, dict) else f" (given: {given!r})"
        lines.append(f"  {field}: {msg}{given_txt}")
    return f"invalid config {source}:\n" + "\n".join(lines)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`training.iterations=10` → ("training.iterations", 10); values are TOML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string
    return key.strip(), value


def find_config(name_or_path: str | os.PathLike) -> Path:
    """A path to a TOML file, or the name of a shipped config (`gala` → configs/gala.toml)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path.resolve()
    search = [Path(p) for p in os.environ.get("LSDFLOW_CONFIG_PATH", "").split(os.pathsep) if p]
    for directory in [*search, CONFIG_DIR]:
        candidate = directory / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate.resolve()
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    raise ConfigError(f"no config named {name_or_path!r}; shipped configs: {shipped}")


def _resolve_path(base: Path, path: Any) -> Any:
    """A config-relative path made absolute; an empty one stays empty (and is refused)."""
    return str((base / path).resolve()) if str(path).strip() else path


def _resolve_paths(tree: dict[str, Any], base: Path) -> None:
    data = tree.get("data", {})
    for key in ("train", "validation", "test"):
        if key in data:
            data[key] = [
                {**v, "path": _resolve_path(base, v["path"])} if isinstance(v, dict) and "path" in v
                else _resolve_path(base, v) if isinstance(v, (str, os.PathLike)) else v
                for v in data[key]
            ]
    pred = tree.get("prediction", {})
    if pred.get("checkpoint"):
        pred["checkpoint"] = str((base / pred["checkpoint"]).resolve())
    if tree.get("workspace"):
        tree["workspace"] = str((base / tree["workspace"]).resolve())


def load_config(
    name_or_path: str | os.PathLike,
    overrides: list[str] | None = None,
    workspace: str | os.PathLike | None = None,
) -> LsdflowConfig:
    """Read, override (`section.field=value`) and validate a config."""
    path = find_config(name_or_path)
    try:
        # a resolved config saved as JSON (e.g. handed to a training subprocess) loads too
        tree = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    tree.pop("source", None)
    for text in overrides or []:
        _set_dotted(tree, *parse_override(text))
    _resolve_paths(tree, path.parent)
    tree.setdefault("name", path.stem)
    tree["source"] = str(path)
    if workspace is not None:
        tree["workspace"] = str(Path(workspace).resolve())
    try:
        return LsdflowConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(str(path), e)) from None


def config_from_dict(tree: dict[str, Any], source: str = "<dict>") -> LsdflowConfig:
    try:
        return LsdflowConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(source, e)) from None


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def check_voxel_size(config: LsdflowConfig, found: tuple[int, ...], where: str) -> None:
    """The data's voxel size must equal `data.voxel_size` (no silent resampling)."""
    if tuple(found) != tuple(config.data.voxel_size):
        raise ConfigError(
            f"data.voxel_size = {tuple(config.data.voxel_size)} in {config.source} disagrees "
            f"with {where}, whose voxel size is {tuple(found)} nm; set data.voxel_size = "
            f"{list(found)} or use data at {tuple(config.data.voxel_size)} nm"
        )


