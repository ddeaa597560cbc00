"""Values derived from the params, as plain functions of the params object (they only read attributes): which
epochs are saved, probed and densified, the surface's and the line's epochs, the hidden widths, the connect copy's
data seed. ``tests/test_layout.py`` runs them on a recording proxy to derive which keys each stage reads."""

from __future__ import annotations

from typing import Any


def hidden_widths(model: Any) -> list[int]:
    """The hidden widths: ``model.hidden``, or ``[model.width] * model.depth``."""
    return list(model.hidden) if model.hidden is not None else [model.width] * model.depth


def saved_epochs(train: Any) -> list[int]:
    """Epochs with a checkpoint: 0 (the initialization), every ``train.checkpoint_every``-th, and the last."""
    every, epochs = train.checkpoint_every, train.epochs
    return sorted({0, epochs, *range(every, epochs + 1, every)})


def probed_epochs(params: Any) -> list[int]:
    """Every ``probe.every``-th saved checkpoint, always including the last one."""
    saved = saved_epochs(params.train)
    return sorted(set(saved[:: params.probe.every]) | {saved[-1]})


def density_epochs(params: Any) -> list[int]:
    """Epochs whose Hessian spectral density is estimated (``probe.density_epochs`` resolved)."""
    de = params.probe.density_epochs
    probed = probed_epochs(params)
    return {"last": probed[-1:], "all": probed, "none": []}[de] if isinstance(de, str) else sorted(de)


def surface_epoch(params: Any) -> int:
    """``surface.epoch``, with null meaning the last epoch (``train.epochs``)."""
    epoch = params.surface.epoch
    return params.train.epochs if epoch is None else epoch


DATA_SEED_OFFSET = 0x9E3779B9  # 2654435769, the golden-ratio constant: far from the small seeds grids use


def connect_data_seed(params: Any) -> int:
    """The copy's mini-batch order seed: ``connect.data_seed``, or when null (train.seed + 2654435769) mod 2³²,
    which never equals train.seed, so a grid over ``train.seed`` needs no per-point copy seed."""
    seed = params.connect.data_seed
    return (params.train.seed + DATA_SEED_OFFSET) % 2**32 if seed is None else seed


def resolved_end_epoch(params: Any) -> int:
    """``interpolate.end_epoch``, with null meaning the last epoch (``train.epochs``)."""
    end = params.interpolate.end_epoch
    return params.train.epochs if end is None else end


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 12 else f"[{values[0]}, {values[1]}, …, {values[-1]}]"
