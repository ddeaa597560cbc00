"""Typed, validated view of ``params.yaml``: one group per stage, and the checks across groups.

Every stage loads the whole file (:func:`landscape.params_file.load_params`) before doing any work. An unknown key, a
value of the wrong type or out of range, or a cross-group inconsistency raises :class:`ConfigError`
with one line that names the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# derived values: part of this module's interface (stages and tests use config.X)
from landscape.derived import _short, connect_data_seed, density_epochs, hidden_widths  # noqa: F401
from landscape.derived import probed_epochs, resolved_end_epoch, saved_epochs, surface_epoch  # noqa: F401

ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "softplus", "elu")
SOURCE_KEYWORDS = ("auto", "download", "offline")


class ConfigError(Exception):
    """An invalid params.yaml; ``key``: the dotted key at fault (None: the whole file). Not a ValueError on
    purpose: pydantic would wrap a ValueError raised in a validator."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


MAX_SEED = 2**32 - 1  # numpy and torch accept it; larger seeds overflow torch.manual_seed


class _Group(BaseModel):
    # allow_inf_nan=False: every float must be finite (.inf / .nan in YAML are refused with the key named)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DataConfig(_Group):
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    source: str = "auto"
    train_samples: int | None = Field(default=None, gt=0)
    test_samples: int | None = Field(default=None, gt=0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    download_timeout: float = Field(default=10.0, gt=0, le=600)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v in SOURCE_KEYWORDS:
            return v
        from landscape.data import check_idx_dir  # local import: data imports torch

        check_idx_dir(Path(v))  # raises ValueError naming what is missing
        return v


class ModelConfig(_Group):
    arch: Literal["mlp", "cnn"] = "mlp"
    hidden: list[int] | None = Field(default_factory=lambda: [256, 256])
    depth: int | None = Field(default=None, ge=1, le=1000)  # with width: hidden = [width] * depth
    width: int | None = Field(default=None, ge=1, le=65536)
    activation: Literal["relu", "tanh", "gelu", "sigmoid", "softplus", "elu"] = "relu"
    channels: list[int] = Field(default_factory=lambda: [6, 16])
    batch_norm: bool = False
    skip: bool = False
    init: Literal["torch", "he"] = "torch"

    @field_validator("hidden")
    @classmethod
    def _hidden(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must list at least one hidden width, e.g. [256, 256] (or null, with model.depth and "
                             "model.width)")
        bad = [w for w in v if w <= 0 or w > 65536]
        if bad:
            raise ValueError(f"widths must be integers in 1..65536, got {bad}")
        return v

    @model_validator(mode="after")
    def _one_form(self) -> ModelConfig:
        other = self.depth is not None or self.width is not None
        if self.hidden is not None and other:
            raise ValueError(f"model.hidden = {self.hidden} and model.depth = {self.depth} / model.width = "
                             f"{self.width} both given; allowed: one form (model.hidden: null to use depth × width)")
        if self.hidden is None and (self.depth is None or self.width is None):
            raise ValueError("model.hidden is null: allowed only with both model.depth and model.width "
                             "(hidden = [width] * depth)")
        return self

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[int]) -> list[int]:
        if len(v) != 2 or any(c <= 0 or c > 1024 for c in v):
            raise ValueError("must be two filter counts in 1..1024 (the CNN's two conv blocks), e.g. [6, 16]")
        return v


class TrainConfig(_Group):
    epochs: int = Field(default=10, ge=1, le=100000)
    batch_size: int | Literal["full"] = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    adam_eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    checkpoint_every: int = Field(default=1, ge=1)
    threads: int = Field(default=1, ge=1, le=256)
    device: str = "cpu"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("allowed: auto (cuda when available, else cpu), cpu, cuda, cuda:N")

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: object) -> object:
        if v == "full" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("allowed: a positive integer or 'full' (full-batch gradient descent)")

    @model_validator(mode="after")
    def _nesterov(self) -> TrainConfig:
        if self.nesterov and self.optimizer == "adam":
            raise ValueError("train.nesterov = true with train.optimizer = adam: allowed only with sgd "
                             "(train.momentum is Adam's beta1)")
        if self.nesterov and self.momentum == 0:
            raise ValueError("train.nesterov = true needs train.momentum > 0 (Nesterov without momentum is plain SGD)")
        return self

    @property
    def full_batch(self) -> bool:
        return self.batch_size == "full"

    def saved_epochs(self) -> list[int]:
        """Epochs with a checkpoint: 0 (the initialization), every ``checkpoint_every``-th, and the last."""
        return saved_epochs(self)


class ProbeConfig(_Group):
    every: int = Field(default=1, ge=1)
    samples: int = Field(default=2048, ge=1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    chunk_size: int = Field(default=1024, ge=1)
    lanczos_iters: int = Field(default=40, ge=2, le=1000)
    tol: float = Field(default=1e-4, gt=0, lt=1)
    lanczos_start: Literal["random+gradient", "random"] = "random+gradient"
    sharpness_directions: int = Field(default=8, ge=1)
    sharpness_radius: float = Field(default=0.5, gt=0)
    ascent_steps: int = Field(default=3, ge=1, le=1000)
    adaptive_radius: float = Field(default=10.0, gt=0)
    adaptive_worst_case_radius: float = Field(default=2.0, gt=0)
    trace_samples: int = Field(default=8, ge=0)
    trace_method: Literal["hutchinson", "hutch++"] = "hutchinson"
    top_k: int = Field(default=1, ge=1, le=100)
    smallest: bool = False
    outliers: bool = False  # count the Hessian's eigenvalues separated from its bulk at every probed epoch
    density_epochs: Literal["last", "all", "none"] | list[int] = "last"
    density_runs: int = Field(default=4, ge=1)
    density_steps: int = Field(default=40, ge=2, le=1000)
    eval_batch_size: int = Field(default=4096, ge=1)


class InterpolateConfig(_Group):
    start_epoch: int = Field(default=2, ge=0)
    end_epoch: int | None = Field(default=None, ge=0)
    points: int = Field(default=21, ge=2, le=10001)
    alpha_min: float = 0.0
    alpha_max: float = 1.0

    @model_validator(mode="after")
    def _range(self) -> InterpolateConfig:
        if self.alpha_min > 0.0:
            raise ValueError(f"interpolate.alpha_min = {self.alpha_min}: must be <= 0 (the path starts at alpha = 0)")
        if self.alpha_max < 1.0:
            raise ValueError(f"interpolate.alpha_max = {self.alpha_max}: must be >= 1 (the path ends at alpha = 1)")
        step = (self.alpha_max - self.alpha_min) / (self.points - 1)
        if not any(0.0 < round(self.alpha_min + i * step, 12) < 1.0 for i in range(self.points)):
            raise ValueError(f"interpolate.points = {self.points} over [{self.alpha_min}, {self.alpha_max}] puts no "
                             "point strictly between the two checkpoints, so the barrier would be 0 by construction; "
                             "allowed: more points (3 or more over [0, 1])")
        return self


MAX_FIGURE_PIXELS = 8000  # per side: larger figures exhaust memory in matplotlib's renderer


class SurfaceConfig(_Group):
    enabled: bool = True
    epoch: int | None = Field(default=None, ge=0)
    directions: Literal["random", "pca", "hessian"] = "random"
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    normalization: Literal["filter", "layer", "none"] = "filter"
    orthogonalize: bool = False
    points: int = Field(default=21, ge=3, le=201)
    range: float = Field(default=1.0, gt=0, le=1000)
    split: Literal["train", "test", "probe"] = "train"
    curvature: bool = False  # λ_max, λ_min of the probe-set Hessian on a sub-grid (Li et al. Fig. 8)
    curvature_points: int = Field(default=5, ge=3, le=201)
    curvature_threshold: float = Field(default=0.1, gt=0)

    @model_validator(mode="after")
    def _sub_grid(self) -> SurfaceConfig:
        for key in ("points", "curvature_points"):
            n = getattr(self, key)
            if n % 2 == 0:  # an even grid steps over its centre: no point at θ, and centre_loss would be off it
                raise ValueError(f"surface.{key} = {n} is even: the grid would not contain its centre θ; allowed: "
                                 f"an odd number, e.g. {n - 1} or {n + 1}")
        if self.curvature and self.curvature_points > self.points:
            raise ValueError(f"surface.curvature_points = {self.curvature_points} exceeds surface.points = "
                             f"{self.points}: the curvature sub-grid is the coarser one; allowed: odd, "
                             f"3..{self.points}")
        return self


class ConnectConfig(_Group):
    enabled: bool = True
    spawn_epoch: int = Field(default=0, ge=0)
    data_seed: int | None = Field(default=None, ge=0, le=MAX_SEED)  # None: derived from train.seed
    points: int = Field(default=21, ge=3, le=1001)
    curve: Literal["none", "bezier"] = "none"
    curve_epochs: int = Field(default=2, ge=1, le=10000)


class MeasuresConfig(_Group):
    """Measures at the final checkpoint (landscape.measures): norms, margins, PAC-Bayes and worst-case flatness
    (one deviation, tolerance, subset and ε for both searches, as Jiang et al.), weight spectra, #steps."""

    enabled: bool = True
    margin_percentile: float = Field(default=10.0, gt=0, lt=100)
    pacbayes: bool = True
    pacbayes_deviation: float = Field(default=0.1, gt=0, lt=1)
    pacbayes_depth: int = Field(default=15, ge=1, le=60)
    pacbayes_samples: int = Field(default=10, ge=1, le=10000)
    pacbayes_tolerance: float = Field(default=0.01, gt=0, lt=1)
    pacbayes_examples: int | None = Field(default=10000, ge=1)  # at most; None = the whole training split
    pacbayes_seed: int = Field(default=0, ge=0, le=MAX_SEED)
    pacbayes_magnitude_eps: float = Field(default=1e-3, gt=0)
    sharpness: bool = True  # Jiang's sharpness.flatness / sharpness.mag.flatness (worst case in a box)
    sharpness_depth: int = Field(default=15, ge=1, le=60)
    sharpness_steps: int = Field(default=10, ge=1, le=1000)
    weightwatcher: bool = True
    steps_threshold: float = Field(default=0.1, gt=0)

    @model_validator(mode="after")
    def _tolerance(self) -> MeasuresConfig:
        if self.pacbayes_tolerance >= self.pacbayes_deviation:
            raise ValueError(f"measures.pacbayes_tolerance = {self.pacbayes_tolerance} must be below "
                             f"measures.pacbayes_deviation = {self.pacbayes_deviation} (else any σ stops the search)")
        return self


class PlotConfig(_Group):
    dpi: int = Field(default=120, ge=30, le=600)
    width: float = Field(default=6.4, gt=0, le=40)
    height: float = Field(default=4.0, gt=0, le=40)
    style: Literal["default", "ggplot", "bmh", "classic", "fivethirtyeight", "grayscale"] = "default"

    @model_validator(mode="after")
    def _pixels(self) -> PlotConfig:
        for side in ("width", "height"):
            pixels = getattr(self, side) * self.dpi
            if pixels > MAX_FIGURE_PIXELS:
                raise ValueError(f"plot.{side} × plot.dpi = {pixels:.0f} pixels; allowed: at most "
                                 f"{MAX_FIGURE_PIXELS} (lower plot.dpi or plot.{side})")
        return self


class TrackConfig(_Group):
    experiment: str = Field(default="landscape", max_length=200)
    run_name: str | None = Field(default=None, max_length=250)

    @field_validator("experiment", "run_name")
    @classmethod
    def _visible(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must contain a visible character (null for run_name = a readable generated name)")
        return v


class Params(_Group):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    interpolate: InterpolateConfig = Field(default_factory=InterpolateConfig)
    surface: SurfaceConfig = Field(default_factory=SurfaceConfig)
    connect: ConnectConfig = Field(default_factory=ConnectConfig)
    measures: MeasuresConfig = Field(default_factory=MeasuresConfig)
    plot: PlotConfig = Field(default_factory=PlotConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)

    @model_validator(mode="after")
    def _cross(self) -> Params:
        saved = self.train.saved_epochs()
        for key in ("start_epoch", "end_epoch"):
            epoch = getattr(self.interpolate, key)
            if epoch is not None and epoch not in saved:
                raise ConfigError(
                    f"params.yaml: interpolate.{key} = {epoch}: no checkpoint for that epoch; "
                    f"allowed: one of the saved epochs {_short(saved)} "
                    f"(train.epochs = {self.train.epochs}, train.checkpoint_every = {self.train.checkpoint_every})",
                    key=f"interpolate.{key}",
                )
        if self.interpolate.start_epoch == self.resolved_end_epoch():
            raise ConfigError(
                f"params.yaml: interpolate.start_epoch = {self.interpolate.start_epoch} equals interpolate.end_epoch: "
                "allowed: two different saved epochs",
                key="interpolate.start_epoch",
            )
        if self.surface.enabled and self.surface.epoch is not None and self.surface.epoch not in saved:
            raise ConfigError(
                f"params.yaml: surface.epoch = {self.surface.epoch}: no checkpoint for that epoch; allowed: null "
                f"(the last) or one of the saved epochs {_short(saved)}",
                key="surface.epoch",
            )
        if self.surface.enabled and self.surface.directions == "pca" and len(saved) < 3:
            raise ConfigError(
                f"params.yaml: surface.directions = pca with saved checkpoints {_short(saved)}: the trajectory's "
                "principal directions need at least 3 checkpoints; allowed: train.epochs and "
                "train.checkpoint_every that save 3 or more, or surface.directions = random | hessian",
                key="surface.directions",
            )
        if self.connect.enabled and (self.connect.spawn_epoch not in saved
                                     or self.connect.spawn_epoch >= self.train.epochs):
            raise ConfigError(
                f"params.yaml: connect.spawn_epoch = {self.connect.spawn_epoch}: allowed: a saved epoch before the "
                f"last, one of {_short(saved[:-1])} (0 = the initialization)",
                key="connect.spawn_epoch",
            )
        if self.connect.enabled and self.connect.data_seed == self.train.seed:
            raise ConfigError(
                f"params.yaml: connect.data_seed = {self.connect.data_seed} equals train.seed: the second copy would "
                "see the same mini-batch order; allowed: null (derived from train.seed, never equal to it) or any "
                "other seed",
                key="connect.data_seed",
            )
        de = self.probe.density_epochs
        if isinstance(de, list):
            bad = [e for e in de if e not in self.probed_epochs()]
            if bad:
                raise ConfigError(
                    f"params.yaml: probe.density_epochs = {de}: epoch(s) {bad} are not probed; allowed: "
                    f"last | all | none | a list from the probed epochs {_short(self.probed_epochs())}",
                    key="probe.density_epochs",
                )
        if self.probe.top_k >= self.probe.lanczos_iters:
            raise ConfigError(
                f"params.yaml: probe.top_k = {self.probe.top_k} with probe.lanczos_iters = {self.probe.lanczos_iters}: "
                "Lanczos needs more steps than eigenvalues; allowed: probe.top_k < probe.lanczos_iters",
                key="probe.top_k",
            )
        if self.probe.outliers and self.probe.top_k < 2 * 10:
            raise ConfigError(
                f"params.yaml: probe.outliers = true with probe.top_k = {self.probe.top_k}: the rule reads the top-k "
                "eigenvalues, which must reach past the C = 10 expected outliers into the bulk; allowed: "
                "probe.top_k >= 20",
                key="probe.top_k",
            )
        if self.probe.trace_method == "hutch++" and 0 < self.probe.trace_samples < 3:
            raise ConfigError(
                f"params.yaml: probe.trace_samples = {self.probe.trace_samples} with probe.trace_method = hutch++: "
                "allowed: 0 (off) or >= 3 (Hutch++ splits its products in three)",
                key="probe.trace_samples",
            )
        if self.data.source == "offline" and self.data.dataset != "mnist":
            raise ConfigError(
                f"params.yaml: data.source = offline with data.dataset = {self.data.dataset}: the offline source ships "
                "MNIST digits only; allowed: data.dataset = mnist, or data.source = download | auto | a directory",
                key="data.source",
            )
        if self.data.train_samples is not None and self.probe.samples > self.data.train_samples:
            raise ConfigError(
                f"params.yaml: probe.samples = {self.probe.samples} exceeds data.train_samples = "
                f"{self.data.train_samples}; allowed: 1..{self.data.train_samples}",
                key="probe.samples",
            )
        return self

    def resolved_end_epoch(self) -> int:
        return resolved_end_epoch(self)

    def probed_epochs(self) -> list[int]:
        return probed_epochs(self)

    def density_epochs(self) -> list[int]:
        return density_epochs(self)


GROUPS: dict[str, type[BaseModel]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "probe": ProbeConfig,
    "interpolate": InterpolateConfig,
    "surface": SurfaceConfig,
    "connect": ConnectConfig,
    "measures": MeasuresConfig,
    "plot": PlotConfig,
    "track": TrackConfig,
}
