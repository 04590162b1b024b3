"""benchmarks/imagefolder_parity.py: the class folders it writes are what ImageFolder reads as Fashion-MNIST
(labels in IDX order, one file per image), and its three recipes differ only in where the data (and, for the
third, the baseline weights) come from."""
from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import imagefolder_parity  # noqa: E402

from compress.recipe.schema import load_recipe  # noqa: E402


def _idx(path: Path, magic: int, dims: tuple[int, ...], data: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + data)


def test_class_folders_hold_every_image_under_its_label_in_idx_order(tmp_path):
    from torchvision import datasets

    idx = tmp_path / "idx"
    idx.mkdir()
    labels = {"train": bytes([3, 0, 3, 1, 0]), "t10k": bytes([1, 1, 2])}
    for stem, lab in labels.items():
        n = len(lab)
        pixels = bytes((i * 7 + j) % 256 for i in range(n) for j in range(28 * 28))
        _idx(idx / f"{stem}-images-idx3-ubyte.gz", 0x803, (n, 28, 28), pixels)
        _idx(idx / f"{stem}-labels-idx1-ubyte.gz", 0x801, (n,), lab)
    out = imagefolder_parity.write_class_folders(idx, tmp_path / "png")
    train = datasets.ImageFolder(str(out / "train"))
    assert train.classes == ["00", "01", "03"]
    # class by class, each class' files in IDX order: (label, IDX position)
    assert [(int(train.classes[c]), int(Path(p).stem)) for p, c in train.samples] == [(0, 1), (0, 4), (1, 3),
                                                                                       (3, 0), (3, 2)]
    assert len(datasets.ImageFolder(str(out / "test")).samples) == 3
    assert (out / ".complete").is_file() and not (tmp_path / "png.partial").exists()


def test_the_three_recipes_differ_only_in_their_data_and_weights(tmp_path):
    made = imagefolder_parity.recipes(tmp_path / "png", 1, tmp_path / "idx" / "baseline.pt")
    assert list(made) == ["idx", "imagefolder", "imagefolder-idx-weights"]
    parsed = {}
    for name, recipe in made.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        parsed[name] = load_recipe(str(path))
    idx, folder, same = parsed.values()
    assert folder.data.source == "imagefolder" and folder.data.mean == idx_stats()[0]
    assert [s.name for s in idx.steps] == [s.name for s in folder.steps] == [s.name for s in same.steps]
    assert idx.baseline == folder.baseline and idx.seed == folder.seed
    assert same.model.checkpoint == str(tmp_path / "idx" / "baseline.pt") and folder.model.checkpoint is None


def idx_stats():
    from compress.data import DataConfig
    from compress.data.sources import normalization

    return normalization(DataConfig())
