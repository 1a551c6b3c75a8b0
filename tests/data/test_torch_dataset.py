"""The training dataset wrapper (fgad.data.torch_dataset)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fgad.core.transforms import preprocess, preprocess_mask
from fgad.data.datasets import Sample, discover, read_sample
from fgad.data.synthetic import make_synthetic_dataset
from fgad.data.torch_dataset import AnomalyDataset, collate

SIZE = 32


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = make_synthetic_dataset(
        tmp_path_factory.mktemp("syn") / "data", n_train_good=2, n_test_good=2, n_test_defect=2, image_size=48
    )
    return discover(root, "test")


def test_item_fields(samples: list[Sample]) -> None:
    ds = AnomalyDataset(samples, SIZE)
    assert len(ds) == len(samples)
    for i in (0, len(ds) - 1):
        item = ds[i]
        assert set(item) == {"image", "mask", "label", "class_name", "path", "valid"}
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, SIZE, SIZE) and item["mask"].dtype == torch.float32
        assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
        assert item["label"].item() == samples[i].label
        assert item["class_name"] == samples[i].class_name and item["path"] == str(samples[i].image_path)
        assert item["valid"] is True
        image, mask = read_sample(samples[i])
        np.testing.assert_array_equal(item["image"].numpy(), preprocess(image, SIZE))
        np.testing.assert_array_equal(item["mask"][0].numpy(), preprocess_mask(mask, SIZE))
    assert not ds[0]["mask"].any()  # samples are sorted good-first
    assert ds[len(ds) - 1]["mask"].any()
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataloader_collate(samples: list[Sample]) -> None:
    loader = DataLoader(AnomalyDataset(samples, SIZE), batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, SIZE, SIZE)
    assert batch["mask"].shape == (4, 1, SIZE, SIZE)
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.int64
    assert batch["valid"].dtype == torch.bool and batch["valid"].all()
    assert isinstance(batch["class_name"], list) and len(batch["path"]) == 4
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_broken_file_gives_invalid_item_and_one_warning(
    samples: list[Sample], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    items = [replace(samples[0], image_path=broken), samples[1]]
    ds = AnomalyDataset(items, SIZE)
    with caplog.at_level(logging.WARNING, logger="fgad.data.torch_dataset"):
        bad = ds[0]
        ds[0]
    assert bad["valid"] is False and not bad["image"].any() and bad["image"].shape == (3, SIZE, SIZE)
    assert len([r for r in caplog.records if str(broken) in r.getMessage()]) == 1
    batch = collate([bad, ds[1]])
    assert batch["valid"].tolist() == [False, True]


def _mosaic_dataset(samples: list[Sample], seed: int = 0) -> AnomalyDataset:
    return AnomalyDataset(samples, SIZE, mosaic_prob=1.0, seed=seed)


def _equal(a: dict, b: dict) -> bool:
    return torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_mosaic_is_deterministic_and_epoch_dependent(samples: list[Sample]) -> None:
    ds = _mosaic_dataset(samples)
    first = [ds[i] for i in range(len(ds))]
    again = _mosaic_dataset(samples)
    assert all(_equal(a, again[i]) for i, a in enumerate(first))
    assert all(_equal(a, ds[i]) for i, a in enumerate(first))
    ds.set_epoch(1)
    assert not all(_equal(a, ds[i]) for i, a in enumerate(first))
    ds.set_epoch(0)  # resuming epoch 0 replays it exactly
    assert all(_equal(a, ds[i]) for i, a in enumerate(first))
    other_seed = _mosaic_dataset(samples, seed=1)
    assert not all(_equal(a, other_seed[i]) for i, a in enumerate(first))


def test_mosaic_tiles_images_masks_and_labels(samples: list[Sample]) -> None:
    half = SIZE // 2
    ds = _mosaic_dataset(samples)
    cells = {}
    for s in samples:
        image, mask = read_sample(s)
        cells[s.image_path] = (s, preprocess(image, half), preprocess_mask(mask, half))
    top, bottom = slice(0, half), slice(half, SIZE)
    quadrants = [(top, top), (top, bottom), (bottom, top), (bottom, bottom)]  # (rows, cols), row-major
    saw_mixed_labels = False
    for i in range(len(ds)):
        item = ds[i]
        image, mask = item["image"].numpy(), item["mask"][0].numpy()
        labels = []
        for q, (rows, cols) in enumerate(quadrants):
            match = [v for v in cells.values() if np.array_equal(image[:, rows, cols], v[1])]
            assert len(match) == 1, f"item {i} quadrant {q} is not one resized sample"
            sample, _, cell_mask = match[0]
            assert sample.class_name == samples[i].class_name
            np.testing.assert_array_equal(mask[rows, cols], cell_mask)
            labels.append(sample.label)
            if q == 0:
                assert sample == samples[i]  # the indexed sample is the top-left cell
        assert item["label"].item() == max(labels)
        saw_mixed_labels |= len(set(labels)) > 1
    assert saw_mixed_labels


def test_constructor_validation(samples: list[Sample]) -> None:
    with pytest.raises(ValueError, match="even image_size"):
        AnomalyDataset(samples, 33, mosaic_prob=0.5)
    with pytest.raises(ValueError, match="mosaic_prob"):
        AnomalyDataset(samples, 32, mosaic_prob=1.5)
    with pytest.raises(ValueError, match="image_size"):
        AnomalyDataset(samples, 0)
