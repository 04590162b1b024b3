import gzip
import struct
from pathlib import Path

import pytest
import torch

from compress.data import read_idx
from compress.data.sources import DEBIAN_FASHION_MNIST
from compress.errors import CompressError


def _write_idx(path: Path, array: torch.Tensor, *, truncate: int = 0) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.to(torch.uint8).numpy().tobytes()
    if truncate:
        data = data[:-truncate]
    with gzip.open(path, "wb") as handle:
        handle.write(data)
    return path


def test_read_idx_round_trip(tmp_path):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    assert torch.equal(read_idx(_write_idx(tmp_path / "x.gz", images)), images)


def test_truncated_idx_names_file_and_sizes(tmp_path):
    path = _write_idx(tmp_path / "bad.gz", torch.zeros(4, 3, 3), truncate=5)
    with pytest.raises(CompressError, match=r"bad\.gz: truncated IDX file: expected 36 data bytes"):
        read_idx(path)


def test_not_idx(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"hello world")
    with pytest.raises(CompressError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.skipif(not Path(DEBIAN_FASHION_MNIST, "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_label_counts():
    labels = read_idx(Path(DEBIAN_FASHION_MNIST, "t10k-labels-idx1-ubyte.gz"))
    assert labels.shape == (10000,)
    assert torch.bincount(labels.long()).tolist() == [1000] * 10  # the published test split is balanced
    train = read_idx(Path(DEBIAN_FASHION_MNIST, "train-labels-idx1-ubyte.gz"))
    assert torch.bincount(train.long()).tolist() == [6000] * 10
    images = read_idx(Path(DEBIAN_FASHION_MNIST, "t10k-images-idx3-ubyte.gz"))
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
