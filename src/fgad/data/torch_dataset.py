"""PyTorch dataset over :class:`fgad.data.datasets.Sample` lists (training only).

Randomness (the mosaic augmentation) comes from a generator seeded with
``(seed, epoch, index)``, so an item is the same whichever worker loads it and a resumed run
replays the same augmentations. Call :meth:`AnomalyDataset.set_epoch` before each epoch; with
``persistent_workers=True`` the workers keep their own copies and do not see the change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fgad.core.io import ImageReadError
from fgad.core.transforms import OPENAI_MEAN, OPENAI_STD, preprocess, preprocess_mask
from fgad.data.datasets import Sample, read_sample

logger = logging.getLogger(__name__)

Item = dict[str, Any]


class AnomalyDataset(Dataset):
    """Preprocessed images, masks and labels for training.

    Each item is a dict: ``image`` float32 ``[3,s,s]``, ``mask`` float32 ``[1,s,s]``, ``label``
    int64 scalar, ``class_name`` str, ``path`` str and ``valid`` bool. An unreadable file yields
    a zero image with ``valid=False`` (warned once per path) so batches still collate; training
    should drop those rows.

    With probability ``mosaic_prob`` an item becomes a 2x2 mosaic (as in FiLo): the indexed
    sample in the top-left cell plus three random samples of the same class, each resized to
    ``s/2``; masks are tiled the same way and the label is the maximum of the four.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        mosaic_prob: float = 0.0,
        seed: int = 0,
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if not 0.0 <= float(mosaic_prob) <= 1.0:
            raise ValueError(f"mosaic_prob must be in [0, 1], got {mosaic_prob!r}")
        if mosaic_prob > 0 and image_size % 2:
            raise ValueError(f"mosaic needs an even image_size to split into 2x2 cells, got {image_size}")
        self.samples = list(samples)
        self.image_size = image_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.mosaic_prob = float(mosaic_prob)
        self.seed = int(seed)
        self.epoch = 0
        self._by_class: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            self._by_class.setdefault(s.class_name, []).append(i)
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream for ``epoch`` (deterministic and resumable)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator used for item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, int(index)])

    def _load(self, index: int, size: int) -> tuple[np.ndarray, np.ndarray] | None:
        sample = self.samples[index]
        try:
            image, mask = read_sample(sample)
        except ImageReadError as exc:
            key = str(exc.path)
            if key not in self._warned:
                self._warned.add(key)
                logger.warning("unreadable file, item marked invalid: %s", exc)
            return None
        return preprocess(image, size, self.mean, self.std), preprocess_mask(mask, size)

    def _item(self, sample: Sample, image: np.ndarray, mask: np.ndarray, label: int, valid: bool) -> Item:
        return {
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(mask)[None],
            "label": torch.tensor(label, dtype=torch.int64),
            "class_name": sample.class_name,
            "path": str(sample.image_path),
            "valid": valid,
        }

    def _mosaic(self, index: int, rng: np.random.Generator) -> Item | None:
        """2x2 mosaic around ``index``, or None when any of its four cells cannot be read."""
        half = self.image_size // 2
        peers = self._by_class[self.samples[index].class_name]
        chosen = [index, *(peers[int(k)] for k in rng.integers(len(peers), size=3))]
        cells = []
        for i in chosen:
            loaded = self._load(i, half)
            if loaded is None:
                return None
            cells.append(loaded)
        top = np.concatenate([cells[0][0], cells[1][0]], axis=2)
        bottom = np.concatenate([cells[2][0], cells[3][0]], axis=2)
        image = np.concatenate([top, bottom], axis=1)
        mask = np.block([[cells[0][1], cells[1][1]], [cells[2][1], cells[3][1]]])
        label = max(self.samples[i].label for i in chosen)
        return self._item(self.samples[index], image, mask.astype(np.float32), label, True)

    def __getitem__(self, index: int) -> Item:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        index = int(index) % len(self)
        sample = self.samples[index]
        rng = self.rng(index)
        if self.mosaic_prob > 0 and rng.random() < self.mosaic_prob:
            item = self._mosaic(index, rng)
            if item is not None:
                return item
        loaded = self._load(index, self.image_size)
        if loaded is None:
            s = self.image_size
            zeros = np.zeros((3, s, s), np.float32)
            return self._item(sample, zeros, np.zeros((s, s), np.float32), sample.label, False)
        image, mask = loaded
        return self._item(sample, image, mask, sample.label, True)


def collate(batch: Sequence[Item]) -> dict[str, Any]:
    """Stack tensors (and bools/numbers into tensors); keep strings and anything else as lists."""
    if not batch:
        raise ValueError("collate: got an empty batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        first = values[0]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int | float) and not isinstance(first, bool):
            out[key] = torch.tensor(values)
        else:
            out[key] = list(values)
    return out
