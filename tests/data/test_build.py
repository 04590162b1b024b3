from pathlib import Path

import pytest
import torch

from compress.data import DataConfig, build_data
from compress.data.sources import DEBIAN_FASHION_MNIST
from compress.errors import CompressError

HAVE_FMNIST = Path(DEBIAN_FASHION_MNIST, "t10k-labels-idx1-ubyte.gz").is_file()


def test_synthetic_splits_and_shapes():
    data = build_data(DataConfig(source="synthetic", synthetic_size=200, val_size=20, calib_size=30,
                                 batch_size=16, image_size=12, channels=3), seed=1)
    assert data.synthetic and data.num_classes == 10
    assert data.input_shape == (3, 12, 12)
    assert data.sizes == {"train": 180, "val": 20, "test": 50, "calib": 30}
    x, y = next(iter(data.train))
    assert x.shape == (16, 3, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_synthetic_is_seeded():
    a = build_data(DataConfig(source="synthetic", synthetic_size=40, val_size=0), seed=3)
    b = build_data(DataConfig(source="synthetic", synthetic_size=40, val_size=0), seed=3)
    assert torch.equal(a.test.dataset.images, b.test.dataset.images)


def test_missing_fashion_mnist_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_DATA", str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CompressError, match="dataset-fashion-mnist"):
        build_data(DataConfig(root=str(empty)))


def test_missing_imagefolder_layout(tmp_path):
    with pytest.raises(CompressError, match="train/ and val/"):
        build_data(DataConfig(source="imagefolder", root=str(tmp_path)))


def test_imagefolder_reads_class_folders(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 24), color=(i * 40, 10, 200)).save(tmp_path / split / cls / f"{i}.png")
    data = build_data(DataConfig(source="imagefolder", root=str(tmp_path), resize=16, val_size=0, batch_size=4))
    assert data.num_classes == 2 and data.input_shape == (3, 16, 16)
    x, y = next(iter(data.test))
    assert x.shape == (6, 3, 16, 16)  # the whole val/ split in one eval batch


def test_cifar10_missing_is_clear(tmp_path):
    with pytest.raises(CompressError, match="CIFAR-10 not found"):
        build_data(DataConfig(source="cifar10", root=str(tmp_path)))


@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_subset_resize_and_channels():
    data = build_data(DataConfig(train_subset=600, test_subset=200, val_size=100, calib_size=64, resize=32,
                                 channels=3, batch_size=50))
    assert data.input_shape == (3, 32, 32)
    assert data.sizes == {"train": 500, "val": 100, "test": 200, "calib": 64}
    x, _ = next(iter(data.calib))
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 1.5  # normalised


def test_imagefolder_val_and_calibration_never_see_augmentation(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(5):  # a textured image: a random crop or flip of it differs from the plain resize
                pixels = (torch.rand(24, 20, 3) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    cfg = DataConfig(source="imagefolder", root=str(tmp_path), resize=16, val_size=2, calib_size=4, batch_size=4,
                     augment=True)
    data = build_data(cfg)
    plain = build_data(DataConfig(source="imagefolder", root=str(tmp_path), resize=16, val_size=2, calib_size=4,
                                  batch_size=4, augment=False))
    for split in ("val", "calib"):
        views = [torch.cat([x for x, _ in getattr(d, split)]) for d in (data, data, plain)]
        torch.testing.assert_close(views[0], views[1])  # deterministic: read twice, the same images
        torch.testing.assert_close(views[0], views[2])  # and exactly the un-augmented ones
    train = data.train.dataset
    first = torch.stack([train[0][0] for _ in range(4)])
    assert not all(torch.equal(first[0], f) for f in first[1:])  # training itself is still augmented


def _sorted_imagefolder(root: Path, per_class: dict[str, int]) -> None:
    """An ImageFolder whose files are sorted by class, like every real one (class_a/* before class_b/*)."""
    from PIL import Image

    for split in ("train", "val"):
        for index, (cls, count) in enumerate(per_class.items()):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), color=index * 60).save(root / split / cls / f"{i:03d}.png")


def _labels(loader) -> torch.Tensor:
    return torch.cat([y for _, y in loader])


def test_imagefolder_splits_and_subsets_hold_every_class_in_proportion(tmp_path):
    _sorted_imagefolder(tmp_path, {"a": 40, "b": 40, "c": 40, "d": 40})
    cfg = DataConfig(source="imagefolder", root=str(tmp_path), resize=8, channels=1, val_size=20, calib_size=16,
                     train_subset=120, test_subset=40, batch_size=8, normalize=False)
    data = build_data(cfg, seed=3)
    for split, per_class in (("val", 5), ("calib", 4), ("test", 10)):
        counts = torch.bincount(_labels(getattr(data, split)), minlength=4).tolist()
        assert counts == [per_class] * 4, (split, counts)
    from compress.data.split import dataset_labels

    train = torch.bincount(dataset_labels(data.train.dataset), minlength=4).tolist()  # the loader drops a tail
    assert train == [25, 25, 25, 25]
    assert data.describe()["splits"]["class_counts"]["val"] == [5, 5, 5, 5]
    # seeded: the same seed gives the same images, another seed other ones
    same, other = build_data(cfg, seed=3), build_data(cfg, seed=4)
    assert same.val.dataset.indices == data.val.dataset.indices != other.val.dataset.indices


def test_stratified_draw_is_proportional_on_unbalanced_classes():
    from compress.data.split import stratified_split

    labels = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    rest, drawn = stratified_split(labels, 10, seed=0)
    assert torch.bincount(labels[drawn], minlength=3).tolist() == [7, 2, 1]
    assert sorted(rest + drawn) == list(range(100)) and not set(rest) & set(drawn)


def test_mean_and_std_come_together_and_fit_grey_images():
    from compress.config import parse
    from compress.errors import ConfigError

    def data(**fields):
        return parse(DataConfig, fields, file="r.yaml", path="data")

    with pytest.raises(ConfigError, match="data.mean: expected given together with std"):
        data(mean=[0.3])
    with pytest.raises(ConfigError, match="data.std: expected positive numbers"):
        data(mean=[0.3], std=[0.0])
    with pytest.raises(ConfigError, match="data.mean: expected one value"):
        data(mean=[0.3, 0.3, 0.3], std=[0.4, 0.4, 0.4])
    with pytest.raises(ConfigError, match="data.std: expected a list of a number"):
        data(mean=[0.3], std="wide")
    assert data(source="imagefolder", root="x", mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2]).mean[2] == 0.3


@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_written_to_class_folders_reads_back_bit_identically(tmp_path):
    """The same images through the IDX source and through PNG class folders (with the IDX source's mean/std)
    are the same tensors: an ImageFolder run of Fashion-MNIST sees what the IDX run sees."""
    from PIL import Image

    from compress.data.idx import read_idx
    from compress.data.sources import normalization
    from compress.data.tensors import prepare_images

    images = read_idx(Path(DEBIAN_FASHION_MNIST, "t10k-images-idx3-ubyte.gz"))[:40]
    labels = read_idx(Path(DEBIAN_FASHION_MNIST, "t10k-labels-idx1-ubyte.gz"))[:40]
    for split in ("train", "test"):
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = tmp_path / split / f"{int(label):02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.numpy()).save(folder / f"{i:05d}.png")
    mean, std = normalization(DataConfig())
    data = build_data(DataConfig(source="imagefolder", root=str(tmp_path), resize=28, channels=1, mean=list(mean),
                                 std=list(std), val_size=0, calib_size=8, eval_batch_size=64))
    x, y = next(iter(data.test))
    order = sorted(range(40), key=lambda i: (int(labels[i]), i))  # ImageFolder: class folders, then file names
    expected = prepare_images(images[order].unsqueeze(1), resize=None, mean=mean, std=std)
    assert torch.equal(y, labels[order].long())
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


def test_storage_order_does_not_change_the_batches():
    """The same images stored interleaved and stored class by class (as an image folder lists them) give the same
    training batches (same seed) and the same calibration batches, each of which holds several classes."""
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    labels = torch.arange(120) % 4  # interleaved: 0 1 2 3 0 1 ...
    images = torch.randn(120, 1, 6, 6)
    images[:, 0, 0, 0] = torch.arange(120).float()  # each image carries its identity
    by_class = torch.argsort(labels, stable=True)  # the same images, stored class by class
    cfg = DataConfig(batch_size=16, val_size=20, calib_size=32)
    bundles = [build_data(cfg, seed=3, splits={"train": TensorDataset(x, y), "test": TensorDataset(x, y),
                                               "num_classes": 4})
               for x, y in ((images, labels), (images[by_class], labels[by_class]))]

    def ids(loader):
        return [(x[:, 0, 0, 0].long().tolist(), y.tolist()) for x, y in loader]

    interleaved, sorted_ = bundles
    assert ids(interleaved.train) == ids(sorted_.train)
    assert ids(interleaved.calib) == ids(sorted_.calib)
    assert all(len(set(y)) > 1 for _, y in ids(sorted_.calib))  # mixed, not one class per batch
