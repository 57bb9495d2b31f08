"""A PyTorch Dataset over the series of a mounted dataset: one item per series, a volume of
a fixed shape with a class label taken from the subject's clinical data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from batch_tools.data import DataError, MountedDataset, SeriesCache, SeriesRecord, open_dataset


def fit_volume(volume: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """A (1, D, H, W) float tensor of `shape` from a (slices, rows, columns) volume:
    resized trilinearly (the same input always gives the same output) and normalised to
    zero mean and unit variance, so series of different modalities share a scale."""
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    if tuple(tensor.shape[2:]) != tuple(shape):
        tensor = F.interpolate(tensor, size=tuple(shape), mode="trilinear",
                               align_corners=False)
    tensor = tensor[0]
    std = tensor.std()
    return (tensor - tensor.mean()) / (std if std > 1e-6 else 1.0)


class SeriesDataset(Dataset):
    """One item per series: ``(volume, label)`` with `volume` a float tensor of shape
    ``(1, *shape)`` and `label` the index of the subject's `label_key` value in `classes`.

    Keeps paths and records only (no open file), so DataLoader workers get it by pickling
    or forking alike. With `cache_dir`, decoded series are kept there (see SeriesCache)."""

    def __init__(self, dataset: MountedDataset | str | os.PathLike[str], *,
                 label_key: str = "diagnosis", shape: Sequence[int] = (16, 64, 64),
                 classes: Sequence[str] | None = None, modality: str | None = None,
                 body_part: str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.dataset = dataset if isinstance(dataset, MountedDataset) else open_dataset(dataset)
        if len(shape) != 3 or any(int(n) < 1 for n in shape):
            raise DataError("bad_shape", f"shape must be three positive sizes, got {shape!r}")
        self.shape = tuple(int(n) for n in shape)
        self.label_key = label_key
        self.series: list[SeriesRecord] = self.dataset.series(modality=modality,
                                                              body_part=body_part)
        if not self.series:
            raise DataError("no_series", "no series in this dataset match")
        values = []
        for record in self.series:
            value = self.dataset.subject(record.subject).value(label_key)
            if value is None:
                raise DataError("label_missing", f"subject {record.subject} has no "
                                f"{label_key!r} value")
            values.append(str(value))
        self.classes = list(classes) if classes is not None else sorted(set(values))
        unknown = sorted(set(values) - set(self.classes))
        if unknown:
            raise DataError("label_unknown", f"{label_key} values {unknown} are not among "
                            f"the classes {self.classes}")
        self.labels = [self.classes.index(v) for v in values]
        self.cache = SeriesCache(Path(cache_dir)) if cache_dir is not None else None

    def __len__(self) -> int:
        return len(self.series)

    def volume(self, index: int) -> np.ndarray:
        record = self.series[index]
        if self.cache is not None:
            return self.cache.load(self.dataset, record)
        return self.dataset.load_series(record)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return fit_volume(self.volume(index), self.shape), self.labels[index]
