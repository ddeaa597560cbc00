"""Exactly which params each DVC stage reads.

Every stage loads its inputs through :func:`load` and gets nothing else from params.yaml, so that dvc.yaml can
declare exactly these keys: an edit to any other key never reruns the stage, and an edit to one of these
always does. ``tests/test_layout.py`` runs each resolver on a recording proxy of the params, derives the keys
it reads and compares them with dvc.yaml. Validation still covers the whole file: an invalid value anywhere
stops every stage before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from landscape import config, params_file
from landscape.config import DataConfig, MeasuresConfig, ModelConfig, PlotConfig, ProbeConfig, TrainConfig


def _copy(group: Any, cls: type) -> Any:
    """A fresh validated copy of a params group built from reading each of its keys."""
    return cls(**{key: getattr(group, key) for key in cls.model_fields})


@dataclass(frozen=True)
class DownloadInputs:
    data: DataConfig


@dataclass(frozen=True)
class TrainInputs:
    model: ModelConfig
    train: TrainConfig


@dataclass(frozen=True)
class ProbeInputs:
    probe: ProbeConfig
    epochs: list[int]  # the probed checkpoints
    density_epochs: list[int]
    threads: int
    device: str


@dataclass(frozen=True)
class InterpolateInputs:
    start_epoch: int
    end_epoch: int
    points: int
    alpha_min: float
    alpha_max: float
    eval_batch_size: int
    threads: int
    device: str


@dataclass(frozen=True)
class SurfaceInputs:
    enabled: bool
    epoch: int
    seed: int
    normalization: str
    orthogonalize: bool
    points: int
    range: float
    split: str
    probe_samples: int | None  # split = probe or directions = hessian: the probe subset P
    probe_seed: int | None
    eval_batch_size: int
    threads: int
    device: str
    directions: str = "random"
    curvature: bool = False
    curvature_points: int | None = None
    curvature_threshold: float | None = None
    lanczos_iters: int | None = None  # directions = hessian or curvature: the probe's Lanczos settings
    tol: float | None = None
    chunk_size: int | None = None
    lanczos_start: str | None = None


@dataclass(frozen=True)
class ConnectInputs:
    enabled: bool
    spawn_epoch: int
    data_seed: int
    points: int
    curve: str
    curve_epochs: int
    train: TrainConfig  # the copy is trained with the main run's hyperparameters
    eval_batch_size: int


@dataclass(frozen=True)
class MeasuresInputs:
    measures: MeasuresConfig
    eval_batch_size: int
    threads: int
    device: str


@dataclass(frozen=True)
class PlotInputs:
    plot: PlotConfig


@dataclass(frozen=True)
class TrackInputs:
    flat_params: dict[str, Any]
    experiment: str
    run_name: str | None


def download(p: Any) -> DownloadInputs:
    return DownloadInputs(_copy(p.data, DataConfig))


def train(p: Any) -> TrainInputs:
    return TrainInputs(_copy(p.model, ModelConfig), _copy(p.train, TrainConfig))


def probe(p: Any) -> ProbeInputs:
    return ProbeInputs(_copy(p.probe, ProbeConfig), config.probed_epochs(p), config.density_epochs(p),
                       p.train.threads, p.train.device)


def interpolate(p: Any) -> InterpolateInputs:
    i = p.interpolate
    return InterpolateInputs(i.start_epoch, config.resolved_end_epoch(p), i.points, i.alpha_min, i.alpha_max,
                             p.probe.eval_batch_size, p.train.threads, p.train.device)


def surface(p: Any) -> SurfaceInputs:
    s = p.surface
    split, directions, curvature = s.split, s.directions, s.curvature
    hessian = directions == "hessian" or curvature
    samples, seed = (p.probe.samples, p.probe.seed) if split == "probe" or hessian else (None, None)
    lanczos = (p.probe.lanczos_iters, p.probe.tol, p.probe.chunk_size, p.probe.lanczos_start) if hessian else (
        None, None, None, None)
    sub = (s.curvature_points, s.curvature_threshold) if curvature else (None, None)
    return SurfaceInputs(s.enabled, config.surface_epoch(p), s.seed, s.normalization, s.orthogonalize, s.points,
                         s.range, split, samples, seed, p.probe.eval_batch_size, p.train.threads, p.train.device,
                         directions, curvature, *sub, *lanczos)


def connect(p: Any) -> ConnectInputs:
    c = p.connect
    return ConnectInputs(c.enabled, c.spawn_epoch, config.connect_data_seed(p), c.points, c.curve, c.curve_epochs,
                         _copy(p.train, TrainConfig), p.probe.eval_batch_size)


def measures(p: Any) -> MeasuresInputs:
    return MeasuresInputs(_copy(p.measures, MeasuresConfig), p.probe.eval_batch_size, p.train.threads,
                          p.train.device)


def plot(p: Any) -> PlotInputs:
    return PlotInputs(_copy(p.plot, PlotConfig))


def track(p: Any) -> TrackInputs:
    return TrackInputs(params_file.flatten(p), p.track.experiment, p.track.run_name)


RESOLVERS: dict[str, Callable[[Any], Any]] = {
    "download": download,
    "train": train,
    "probe": probe,
    "interpolate": interpolate,
    "surface": surface,
    "connect": connect,
    "measures": measures,
    "plot": plot,
    "track": track,
}


def load(stage: str, path: str = "params.yaml") -> Any:
    """Validate the whole params file, then return only what ``stage`` reads."""
    return RESOLVERS[stage](params_file.load_params(path))
