"""Tests of glowlab.data: raw-format parsers on tiny synthetic files, the offline copies,
errors and downloads without a network, and the batch augmentations."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import re
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import glowlab.data as gd
from glowlab.data import download as dl

# ---------------------------------------------------------------------------------------------
# Helpers that write the raw formats.


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: two zero bytes, type code, ndim, big-endian sizes, big-endian data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    dtype = np.dtype(np.uint8) if array.dtype == np.uint8 else np.dtype(">i4")
    header = bytes([0, 0, codes[dtype], array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> bytes:
    raw = idx_bytes(array)
    data = gzip.compress(raw) if compress else raw
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def fake_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(
        np.uint8
    )


def write_mnist(folder: Path, n: int = 5, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    images, labels = fake_mnist(n, seed=1)
    prefix = "train" if split == "train" else "t10k"
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


def cifar_batches(n: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Per batch name: (N, 3072) uint8 data and N labels, distinct across batches."""
    rng = np.random.default_rng(2)
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    return {
        name: (
            rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            [int(v) for v in rng.integers(0, 10, n)],
        )
        for name in names
    }


def cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    # Protocol 2 with bytes keys, like the Python 2 pickles of the official release.
    batch = {b"batch_label": b"synthetic", b"labels": labels, b"data": data, b"filenames": []}
    # The official files were written by NumPy 1.x, which named the module numpy.core.
    return pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")


# ---------------------------------------------------------------------------------------------
# reduce_bits and the base class


def test_reduce_bits_keeps_top_bits() -> None:
    x = torch.arange(256, dtype=torch.uint8)
    for n in range(1, 9):
        step = 2 ** (8 - n)
        expected = (torch.arange(256) // step * step).to(torch.uint8)
        out = gd.reduce_bits(x, n)
        assert out.dtype == torch.uint8
        assert torch.equal(out, expected)
        assert len(out.unique()) == 2**n
    assert gd.reduce_bits(x, 8) is not x


def test_reduce_bits_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"1\.\.8"):
        gd.reduce_bits(torch.zeros(2, dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match=r"1\.\.8"):
        gd.reduce_bits(torch.zeros(2, dtype=torch.uint8), 9)
    with pytest.raises(TypeError, match="uint8"):
        gd.reduce_bits(torch.zeros(2), 5)
    with pytest.raises(TypeError, match="n_bits"):
        gd.reduce_bits(torch.zeros(2, dtype=torch.uint8), 5.0)  # type: ignore[arg-type]


def test_tensor_dataset_items_and_collate() -> None:
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ds = gd.TensorImageDataset(images, labels, classes=("a", "b", "c"), split="train")
    assert len(ds) == 6 and ds.image_shape == (3, 4, 4) and ds.num_classes == 3
    image, label = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 4, 4)
    assert label.dtype == torch.int64 and label.dim() == 0 and int(label) == 1
    x, y = next(iter(DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 3, 4, 4) and x.dtype == torch.uint8
    assert y.shape == (4,) and y.dtype == torch.int64
    assert "n=6" in repr(ds)


def test_tensor_dataset_validates() -> None:
    with pytest.raises(ValueError, match="uint8"):
        gd.TensorImageDataset(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        gd.TensorImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3))
    with pytest.raises(ValueError, match="out of range"):
        gd.TensorImageDataset(
            torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), classes=("a", "b")
        )
    ds = gd.TensorImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    assert ds.num_classes == 1 and ds.labels.tolist() == [0, 0]


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST idx files


def test_read_idx_gzip_plain_and_int32(tmp_path: Path) -> None:
    images, labels = fake_mnist(3, seed=0)
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "b", labels, compress=False)
    ints = np.array([[1, -2], [70000, 3]], dtype=np.int64)
    write_idx(tmp_path / "c", ints, compress=False)
    out = gd.read_idx(tmp_path / "a.gz")
    assert out.dtype == np.uint8 and out.shape == (3, 28, 28)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(gd.read_idx(tmp_path / "b"), labels)
    np.testing.assert_array_equal(gd.read_idx(tmp_path / "c"), ints)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an idx file"):
        gd.read_idx(tmp_path / "bad")
    full = idx_bytes(np.zeros((4, 2, 2), np.uint8))
    (tmp_path / "short").write_bytes(full[:-3])
    with pytest.raises(ValueError, match="truncated"):
        gd.read_idx(tmp_path / "short")


def test_mnist_from_idx_files(tmp_path: Path) -> None:
    images, labels = write_mnist(tmp_path / "mnist", n=5)
    ds = gd.MNIST(tmp_path, "train", verify=False)
    assert ds.images.shape == (5, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    assert ds.classes == tuple("0123456789") and ds.split == "train"
    padded = gd.get_dataset("mnist", "train", tmp_path, image_size=32, verify=False)
    assert padded.images.shape == (5, 1, 32, 32)
    assert torch.equal(padded.images[:, :, 2:30, 2:30], ds.images)
    assert int(padded.images[:, :, :2].sum()) == 0


def test_fashion_mnist_uncompressed_in_torchvision_layout(tmp_path: Path) -> None:
    images, labels = fake_mnist(4, seed=3)
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", images, compress=False)
    write_idx(raw / "t10k-labels-idx1-ubyte", labels, compress=False)
    ds = gd.get_dataset("Fashion_MNIST", "test", tmp_path)
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
    assert ds.classes[0] == "T-shirt/top" and ds.num_classes == 10


def test_fashion_mnist_never_takes_mnist_files_from_data_dir(tmp_path: Path) -> None:
    # MNIST's decompressed idx files directly in data_dir (a layout MNIST reads): same names
    # as Fashion-MNIST's, and no published MD5 to tell them apart.
    images, labels = fake_mnist(3, seed=8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, compress=False)
    np.testing.assert_array_equal(gd.get_dataset("mnist", "test", tmp_path).images[:, 0], images)
    with pytest.raises(gd.DatasetNotFoundError, match=re.escape(str(tmp_path / "fashion-mnist"))):
        gd.get_dataset("fashion-mnist", "test", tmp_path)
    # The gzipped files: not called corrupt (they are not Fashion-MNIST's to judge), and not
    # read either, even with verify=False.
    write_mnist(tmp_path, n=3, split="test")
    for verify in (True, False):
        with pytest.raises(gd.DatasetNotFoundError) as info:
            gd.get_dataset("fashion-mnist", "test", tmp_path, verify=verify)
        assert not isinstance(info.value, gd.ChecksumError)
        assert "delete" not in str(info.value)


def test_missing_files_error_names_files_and_directory(tmp_path: Path) -> None:
    with pytest.raises(gd.DatasetNotFoundError) as info:
        gd.get_dataset("mnist", "test", tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in message
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert str(tmp_path / "mnist") in message
    assert "--data-dir" in message and "download=True" in message


def test_default_data_dir_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GLOWLAB_DATA_DIR", str(tmp_path))
    assert gd.default_data_dir() == tmp_path
    with pytest.raises(gd.DatasetNotFoundError, match=re.escape(str(tmp_path / "svhn"))):
        gd.get_dataset("svhn", "test")
    monkeypatch.delenv("GLOWLAB_DATA_DIR")
    assert gd.default_data_dir() == Path("~/.cache/glowlab").expanduser()


def test_checksum_mismatch_on_disk(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist", n=2)
    with pytest.raises(gd.ChecksumError) as info:
        gd.MNIST(tmp_path, "train")
    message = str(info.value)
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in message
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert isinstance(info.value, gd.DatasetNotFoundError)


# ---------------------------------------------------------------------------------------------
# Downloads, with urlopen replaced so that no network is used


class FakeServer:
    """Stands in for urllib's urlopen: serves registered bytes, fails for everything else."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []

    def __call__(self, url: str, timeout: float | None = None) -> io.BytesIO:
        self.requests.append(url)
        if url not in self.files:
            raise URLError("no network in tests")
        return io.BytesIO(self.files[url])


def served_mnist(monkeypatch, split: str = "train") -> tuple[FakeServer, np.ndarray]:
    """Point MNIST's file table at a fake mirror serving synthetic data with matching MD5s."""
    images, labels = fake_mnist(6, seed=4)
    blobs = [gzip.compress(idx_bytes(images)), gzip.compress(idx_bytes(labels))]
    remotes, files = [], {}
    for remote, blob in zip(gd.MNIST.remote_files[split], blobs, strict=True):
        mirror = "https://mirror.invalid/" + remote.filename
        remotes.append(gd.RemoteFile(remote.filename, md5(blob), (remote.urls[0], mirror)))
        files[mirror] = blob
    monkeypatch.setattr(gd.MNIST, "remote_files", {split: remotes})
    server = FakeServer(files)
    monkeypatch.setattr(dl, "urlopen", server)
    return server, images


def test_download_tries_mirrors_verifies_and_renames(tmp_path: Path, monkeypatch) -> None:
    server, images = served_mnist(monkeypatch)
    ds = gd.get_dataset("mnist", "train", tmp_path, download=True)
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
    folder = tmp_path / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    # The official URL failed first, then the mirror answered.
    assert server.requests[0].startswith("http://yann.lecun.com/")
    # Present and verified files are not fetched again.
    server.requests.clear()
    gd.get_dataset("mnist", "train", tmp_path, download=True)
    assert server.requests == []


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    server, _ = served_mnist(monkeypatch)
    for url in server.files:
        server.files[url] = b"not the file"
    with pytest.raises(gd.ChecksumError, match="published checksum"):
        gd.MNIST(tmp_path, "train", download=True)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_without_network(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dl, "urlopen", FakeServer({}))
    with pytest.raises(gd.DatasetNotFoundError) as info:
        gd.get_dataset("cifar10", "test", tmp_path, download=True)
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path / "cifar10") in message
    assert "--data-dir" in message and "\n" not in message
    assert list((tmp_path / "cifar10").iterdir()) == []


def test_download_dataset_and_corrupt_file_replaced(tmp_path: Path, monkeypatch) -> None:
    served_mnist(monkeypatch)
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"truncated")
    assert gd.download_dataset("mnist", tmp_path, splits=("train",)) == folder
    assert gd.read_idx(folder / "train-images-idx3-ubyte.gz").shape == (6, 28, 28)
    with pytest.raises(ValueError, match="Google Drive"):
        gd.download_dataset("celeba", tmp_path)
    with pytest.raises(ValueError, match="nothing to download"):
        gd.download_dataset("digits")


def test_search_folder_with_wrong_checksums_is_passed_over(tmp_path: Path, monkeypatch) -> None:
    # Files with the right names but not the published MD5s (another dataset's, or corrupt)
    # in torchvision's folder and in data_dir: neither is used, nor called corrupt.
    write_mnist(tmp_path / "FashionMNIST" / "raw", n=3, split="test")
    with pytest.raises(gd.DatasetNotFoundError) as info:
        gd.FashionMNIST(tmp_path, "test")
    message = str(info.value)
    assert not isinstance(info.value, gd.ChecksumError) and "\n" not in message
    assert str(tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz") in message
    assert "bef4ecab320f06d8554ea6380940ec79" in message and "verify=False" in message
    assert gd.FashionMNIST(tmp_path, "test", verify=False).images.shape == (3, 1, 28, 28)
    write_mnist(tmp_path, n=3)
    with pytest.raises(gd.DatasetNotFoundError, match="not used") as info:
        gd.MNIST(tmp_path, "train")
    assert not isinstance(info.value, gd.ChecksumError)
    # A download replaces what was passed over; the folder's files are left alone.
    _, served = served_mnist(monkeypatch)
    np.testing.assert_array_equal(gd.MNIST(tmp_path, "train", download=True).images[:, 0], served)
    assert (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert gd.read_idx(tmp_path / "train-images-idx3-ubyte.gz").shape == (3, 28, 28)


def test_download_url_single_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dl, "urlopen", FakeServer({"https://x.invalid/f": b"abc"}))
    path = gd.download_url("https://x.invalid/f", tmp_path / "sub" / "f", md5(b"abc"))
    assert path.read_bytes() == b"abc" and gd.md5sum(path) == md5(b"abc")
    # The permissions of a plain open(), not mkstemp's private 0600.
    plain = tmp_path / "plain"
    plain.touch()
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python batches


def test_cifar_from_extracted_folder_and_tarball(tmp_path: Path) -> None:
    batches = cifar_batches(n=2)
    folder = tmp_path / "a" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    tarball = tmp_path / "b" / "cifar10" / "cifar-10-python.tar.gz"
    tarball.parent.mkdir(parents=True)
    with tarfile.open(tarball, "w:gz") as archive:
        for name, (data, labels) in batches.items():
            blob = cifar_pickle(data, labels)
            (folder / name).write_bytes(blob)
            member = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            member.size = len(blob)
            archive.addfile(member, io.BytesIO(blob))
    names = [f"data_batch_{k}" for k in range(1, 6)]
    want_x = np.concatenate([batches[n][0] for n in names]).reshape(-1, 3, 32, 32)
    want_y = [label for n in names for label in batches[n][1]]
    for root in (tmp_path / "a", tmp_path / "b"):
        train = gd.CIFAR10(root, "train", verify=False)
        assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
        np.testing.assert_array_equal(train.images.numpy(), want_x)
        assert train.labels.tolist() == want_y
        test = gd.get_dataset("cifar-10", "test", root, verify=False)
        np.testing.assert_array_equal(
            test.images.numpy()[1, 2].ravel(), batches["test_batch"][0][1, 2048:]
        )
    # Row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
    assert train.images[0, 1, 0, 5] == batches["data_batch_1"][0][0, 1024 + 5]
    with pytest.raises(gd.ChecksumError, match="data_batch_1"):
        gd.CIFAR10(tmp_path / "a", "train")


def test_cifar_unpickler_refuses_code(tmp_path: Path) -> None:
    evil = pickle.dumps({b"data": print, b"labels": []}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        gd.read_cifar_batch(io.BytesIO(evil))


def test_offline_npz_layout_on_synthetic_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    nhwc = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    np.savez(folder / "test.npz", images=nhwc, labels=np.array([1, 2, 3]))
    ds = gd.get_dataset("cifar10", "test", tmp_path)
    assert ds.images.is_contiguous()
    np.testing.assert_array_equal(ds.images.numpy(), nhwc.transpose(0, 3, 1, 2))
    assert ds.labels.tolist() == [1, 2, 3]
    np.savez(folder / "train_0.npz", images=nhwc, labels=np.array([1, 2, 3]))
    with pytest.raises(gd.DatasetNotFoundError, match=r"train_1\.npz"):
        gd.get_dataset("cifar10", "train", tmp_path)
    with pytest.raises(ValueError, match="at most 32"):
        gd.get_dataset("cifar10", "test", tmp_path, image_size=64)
    small = gd.get_dataset("cifar10", "test", tmp_path, image_size=16)
    assert small.images.shape == (3, 3, 16, 16) and small.images.dtype == torch.uint8


def test_offline_npz_of_the_wrong_layout_or_dataset_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    mnist = rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    labels = np.array([7, 2, 1, 0])
    path = tmp_path / "mnist" / "test.npz"
    path.parent.mkdir()
    # NHW (no channel axis) is accepted for a grayscale dataset.
    np.savez(path, images=mnist[..., 0], labels=labels)
    assert gd.get_dataset("mnist", "test", tmp_path).images.shape == (4, 1, 28, 28)
    cifar = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for images in (mnist.transpose(0, 3, 1, 2), cifar):  # channels first; another dataset
        np.savez(path, images=images, labels=labels)
        with pytest.raises(ValueError) as info:
            gd.get_dataset("mnist", "test", tmp_path)
        message = str(info.value)
        assert str(path) in message and r"(N, 28, 28, 1)" in message and "\n" not in message
    np.savez(path, images=mnist, labels=labels + 0.9)
    with pytest.raises(ValueError, match=r"test\.npz: 'labels' must hold integer"):
        gd.get_dataset("mnist", "test", tmp_path)
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "test.npz", images=mnist, labels=labels)
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\) array .* for CIFAR-10"):
        gd.get_dataset("cifar10", "test", tmp_path)


# ---------------------------------------------------------------------------------------------
# SVHN .mat files


def test_svhn_from_mat(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10]], dtype=np.uint8)
    (tmp_path / "svhn").mkdir()
    scipy_io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": y})
    ds = gd.get_dataset("svhn", "test", tmp_path, verify=False)
    assert ds.images.shape == (4, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 1, 9, 0] and ds.labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.images[2, 1].numpy(), x[:, :, 1, 2])
    with pytest.raises(gd.ChecksumError, match="eb5a983be6a315427106f1b164d9cef3"):
        gd.get_dataset("svhn", "test", tmp_path)
    with pytest.raises(ValueError, match="'train', 'test', 'extra'"):
        gd.get_dataset("svhn", "valid", tmp_path)


# ---------------------------------------------------------------------------------------------
# CelebA and image folders (Pillow)


def write_celeba(folder: Path) -> list[str]:
    image_module = pytest.importorskip("PIL.Image")
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 5)]
    for i, name in enumerate(names):
        # A 178x218 aligned image: a grey border around a uniform 148x148 centre square.
        pixels = np.full((218, 178, 3), 30, dtype=np.uint8)
        pixels[35:183, 15:163] = (200, 40 * i, 100)
        image_module.fromarray(pixels).save(images / name, quality=95)
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, (0, 0, 1, 2), strict=True))
    )
    rows = ["-1  1 -1", " 1  1 -1", " 1 -1 -1", "-1 -1  1"]
    (folder / "list_attr_celeba.txt").write_text(
        "4\nSmiling Young Male\n" + "".join(f"{n} {r}\n" for n, r in zip(names, rows, strict=True))
    )
    return names


def test_celeba_crop_resize_attributes_and_cache(tmp_path: Path) -> None:
    names = write_celeba(tmp_path / "celeba")
    ds = gd.get_dataset("celeba", "train", tmp_path, image_size=32, num_workers=2)
    assert ds.images.shape == (2, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.filenames == tuple(names[:2]) and ds.labels.tolist() == [0, 0]
    # Only the centre square survives the 148x148 crop (up to JPEG error).
    centre = torch.tensor([[200, 0, 100], [200, 40, 100]], dtype=torch.float64)
    assert (ds.images.double().mean((2, 3)) - centre).abs().max() < 3
    assert ds.attribute_names == ("Smiling", "Young", "Male")
    assert ds.attributes.tolist() == [[0, 1, 0], [1, 1, 0]]
    assert ds.attribute("Smiling").tolist() == [0, 1]
    with pytest.raises(ValueError, match="Smiling"):
        ds.attribute("Bald")
    cache = tmp_path / "celeba" / "celeba_train_32px_crop148.npz"
    assert cache.is_file()
    # The cache is enough on its own.
    for name in names:
        (tmp_path / "celeba" / "img_align_celeba" / name).unlink()
    again = gd.CelebA(tmp_path, "train", image_size=32)
    assert torch.equal(again.images, ds.images) and torch.equal(again.attributes, ds.attributes)
    assert again.filenames == ds.filenames
    with pytest.raises(gd.DatasetNotFoundError, match="missing from"):
        gd.CelebA(tmp_path, "test", image_size=32)


def test_celeba_missing_explains_manual_download(tmp_path: Path) -> None:
    with pytest.raises(gd.DatasetNotFoundError) as info:
        gd.get_dataset("celeba", "valid", tmp_path, download=True)
    message = str(info.value)
    assert "Google Drive" in message and str(tmp_path / "celeba") in message
    assert "list_attr_celeba.txt" in message and "--data-dir" in message


def test_image_folder_labels_resize_and_crop(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    root = tmp_path / "pictures"
    # 12 wide, 6 high: red | green | blue column bands 3, 6 and 3 pixels wide.
    bands = np.zeros((6, 12, 3), dtype=np.uint8)
    bands[:, :3, 0] = 255
    bands[:, 3:9, 1] = 255
    bands[:, 9:, 2] = 255
    for relative in ("dogs/b.png", "cats/a.png", "dogs/deep/c.png", ".hidden/d.png"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        image_module.fromarray(bands).save(root / relative)
    (root / "dogs" / "notes.txt").write_text("not an image")
    ds = gd.get_dataset("folder", data_dir=root, image_size=6, class_subfolders=True)
    assert [p.relative_to(root).as_posix() for p in ds.files] == [
        "cats/a.png",
        "dogs/b.png",
        "dogs/deep/c.png",
    ]
    assert ds.classes == ("cats", "dogs") and ds.labels.tolist() == [0, 1, 1]
    assert ds.images.shape == (3, 3, 6, 6)
    # The shorter side already matches, so the centre crop keeps exactly the green band.
    assert ds.images[:, 1].eq(255).all() and ds.images[:, 0].eq(0).all()
    gray = gd.ImageFolder(root, 3, mode="L")
    assert gray.images.shape == (3, 1, 3, 3) and gray.classes == ("pictures",)
    assert gray.labels.tolist() == [0, 0, 0]
    split = gd.get_dataset("folder", "dogs", root, image_size=4)
    assert len(split) == 2
    with pytest.raises(ValueError, match="no sub-folder named 'cats2'"):
        gd.get_dataset("folder", "cats2", root, image_size=4)
    image_module.fromarray(bands).save(root / "loose.png")
    with pytest.raises(ValueError, match=r"loose\.png"):
        gd.ImageFolder(root, 4, class_subfolders=True)
    with pytest.raises(ValueError, match="data_dir"):
        gd.get_dataset("folder", image_size=4)
    with pytest.raises(ValueError, match="image_size"):
        gd.get_dataset("folder", data_dir=root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(gd.DatasetNotFoundError, match="no images"):
        gd.ImageFolder(tmp_path / "empty", 4)


def write_png(path: Path, value: int) -> None:
    image_module = pytest.importorskip("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    image_module.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(path)


def test_image_folder_train_split_leaves_out_held_out_sub_folders(tmp_path: Path) -> None:
    # No train/: the training split is the folder itself, but not its test/ or Val/ images.
    for i in range(3):
        write_png(tmp_path / f"{i}.png", 10 + i)
    write_png(tmp_path / "more" / "3.png", 13)
    write_png(tmp_path / "test" / "t.png", 200)
    write_png(tmp_path / "Val" / "v.png", 210)
    train = gd.get_dataset("folder", "train", tmp_path, image_size=4)
    test = gd.get_dataset("folder", "test", tmp_path, image_size=4)
    assert [p.relative_to(tmp_path).as_posix() for p in train.files] == [
        "0.png",
        "1.png",
        "2.png",
        "more/3.png",
    ]
    assert test.images[:, :, 0, 0].tolist() == [[200, 200, 200]]
    # Read directly, the folder is still read whole.
    assert len(gd.ImageFolder(tmp_path, 4)) == 6
    only_held_out = tmp_path / "only"
    write_png(only_held_out / "test" / "t.png", 200)
    with pytest.raises(gd.DatasetNotFoundError, match=r"no images .* outside test/"):
        gd.get_dataset("folder", "train", only_held_out, image_size=4)


def test_image_folder_without_test_split_says_how_to_make_one(tmp_path: Path) -> None:
    write_png(tmp_path / "0.png", 10)
    assert len(gd.get_dataset("folder", "train", tmp_path, image_size=4)) == 1
    # What training asks for: the message says what to do on disk, not to load 'train' only.
    with pytest.raises(ValueError) as info:
        gd.get_dataset("folder", "test", tmp_path, image_size=4)
    message = str(info.value)
    assert f"move the images to hold out for it into {tmp_path / 'test'}/" in message
    assert "use 'train'" not in message and "\n" not in message
    with pytest.raises(gd.DatasetNotFoundError, match="does not exist"):
        gd.get_dataset("folder", "test", tmp_path / "missing", image_size=4)


def test_image_folder_splits_share_the_training_classes(tmp_path: Path) -> None:
    for name, value in [("cat", 10), ("dog", 20), ("zebra", 30)]:
        write_png(tmp_path / "train" / name / "0.png", value)
    for name, value in [("cat", 11), ("zebra", 31)]:  # the test split has no dogs
        write_png(tmp_path / "test" / name / "0.png", value)
    train = gd.get_dataset("folder", "train", tmp_path, image_size=4, class_subfolders=True)
    test = gd.get_dataset("folder", "test", tmp_path, image_size=4, class_subfolders=True)
    assert train.classes == test.classes == ("cat", "dog", "zebra")
    assert train.labels.tolist() == [0, 1, 2] and test.labels.tolist() == [0, 2]
    write_png(tmp_path / "test" / "lion" / "0.png", 40)
    with pytest.raises(ValueError, match=r"lion of the 'test' split .* \(cat, dog, zebra, in "):
        gd.get_dataset("folder", "test", tmp_path, image_size=4, class_subfolders=True)
    # Without train/, the training classes are the folder's own, its held-out ones aside.
    flat = tmp_path / "flat"
    for name in ("cat", "dog"):
        write_png(flat / name / "0.png", 50)
    write_png(flat / "test" / "dog" / "0.png", 60)
    held_out = gd.get_dataset("folder", "test", flat, image_size=4, class_subfolders=True)
    assert held_out.classes == ("cat", "dog") and held_out.labels.tolist() == [1]
    with pytest.raises(ValueError, match="class_subfolders=True"):
        gd.ImageFolder(flat, 4, classes=("cat", "dog"))


def test_image_folder_scales_16_bit_images_and_refuses_float_ones(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    wide = (np.arange(16, dtype=np.uint16) * 4369).reshape(4, 4)  # 0, 4369, ..., 65535
    expected = (wide.astype(np.float64) / 257).round().astype(np.uint8)
    image_module.fromarray(wide).save(tmp_path / "a.png")
    image_module.fromarray(wide).save(tmp_path / "b.tif")
    # PGM keeps 16 bits too; Pillow opens it with 32-bit integer pixels.
    (tmp_path / "c.pgm").write_bytes(b"P5\n4 4\n65535\n" + wide.astype(">u2").tobytes())
    gray = gd.ImageFolder(tmp_path, 4, mode="L")
    assert [p.name for p in gray.files] == ["a.png", "b.tif", "c.pgm"]
    for image in gray.images:
        np.testing.assert_array_equal(image[0].numpy(), expected)
    rgb = gd.ImageFolder(tmp_path, 4)
    np.testing.assert_array_equal(rgb.images[0].numpy(), np.stack([expected] * 3))
    image_module.fromarray(wide.astype(np.float32)).save(tmp_path / "d.tif")
    with pytest.raises(ValueError, match=r"d\.tif: .*floating-point"):
        gd.ImageFolder(tmp_path, 4)


# ---------------------------------------------------------------------------------------------
# scikit-learn digits, registry and metadata


def test_digits_splits_and_values() -> None:
    pytest.importorskip("sklearn")
    train, test = gd.get_dataset("digits", "train"), gd.get_dataset("digits", "test")
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and test.labels.dtype == torch.int64
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    allowed = {int(np.floor(v * 255 / 16 + 0.5)) for v in range(17)}
    assert set(train.images.unique().tolist()) <= allowed
    assert torch.bincount(test.labels, minlength=10).min() >= 30
    assert gd.Digits("test", image_size=16).images.shape == (360, 1, 16, 16)


def test_registry_names_info_and_errors() -> None:
    names = gd.dataset_names()
    assert names == ("mnist", "fashion-mnist", "cifar10", "svhn", "celeba", "folder", "digits")
    assert gd.dataset_info("cifar10") == ((3, 32, 32), 10)
    assert gd.dataset_info("mnist", image_size=32) == ((1, 32, 32), 10)
    assert gd.dataset_info("celeba", image_size=32).image_shape == (3, 32, 32)
    assert gd.dataset_info("folder") == (None, None)
    assert gd.dataset_splits("celeba") == ("train", "valid", "test")
    with pytest.raises(ValueError, match="'mnist', 'fashion-mnist', 'cifar10'"):
        gd.get_dataset("imagenet")
    with pytest.raises(ValueError, match="'train', 'test'"):
        gd.get_dataset("mnist", "validation")
    with pytest.raises(ValueError, match="at most 32"):
        gd.dataset_info("svhn", image_size=48)
    with pytest.raises(TypeError, match="image_size"):
        gd.get_dataset("digits", image_size=8.0)


# ---------------------------------------------------------------------------------------------
# The real offline copies (skipped when they are not available)


def test_offline_mnist(shared_data: Path) -> None:
    train = gd.get_dataset("mnist", "train", shared_data)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.shape == (60000,) and train.labels.dtype == torch.int64
    assert int(train.labels[0]) == 5
    test = gd.MNIST(shared_data, "test")
    assert test.images.shape == (10000, 1, 28, 28) and int(test.labels[0]) == 7


def test_offline_cifar10(shared_data: Path) -> None:
    train = gd.get_dataset("cifar10", "train", shared_data)
    assert train.images.shape == (50000, 3, 32, 32) and train.labels.shape == (50000,)
    assert train.labels[:5].tolist() == [6, 9, 9, 4, 1]
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    # Known values of data_batch_1, image 0: red channel, first row starts 59, 43, 50.
    assert train.images[0, 0, 0, :3].tolist() == [59, 43, 50]
    assert train.classes[int(train.labels[0])] == "frog"


# ---------------------------------------------------------------------------------------------
# Augmentations


def numpy_shift(image: np.ndarray, dx: int, dy: int, padding: str) -> np.ndarray:
    """Reference: pad by enough pixels with numpy, then cut the shifted window."""
    m = max(abs(dx), abs(dy), 1)
    mode = {"edge": "edge", "reflect": "reflect", "zeros": "constant"}[padding]
    padded = np.pad(image, ((0, 0), (m, m), (m, m)), mode=mode)
    h, w = image.shape[1:]
    return padded[:, m - dy : m - dy + h, m - dx : m - dx + w]


@pytest.mark.parametrize("padding", ["edge", "reflect", "zeros"])
def test_shift_images_matches_numpy(padding: str) -> None:
    x = torch.randint(0, 256, (5, 2, 6, 7), dtype=torch.uint8)
    dx = torch.tensor([0, 2, -3, 1, -1])
    dy = torch.tensor([0, -2, 1, 3, -1])
    out = gd.shift_images(x, dx, dy, padding)  # type: ignore[arg-type]
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for b in range(5):
        want = numpy_shift(x[b].numpy(), int(dx[b]), int(dy[b]), padding)
        np.testing.assert_array_equal(out[b].numpy(), want)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(2, 6),
    w=st.integers(2, 6),
    dx=st.integers(-4, 4),
    dy=st.integers(-4, 4),
    padding=st.sampled_from(["edge", "zeros"]),
)
def test_shift_images_property(h: int, w: int, dx: int, dy: int, padding: str) -> None:
    x = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
    out = gd.shift_images(x, torch.tensor([dx]), torch.tensor([dy]), padding)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out[0].numpy(), numpy_shift(x[0].numpy(), dx, dy, padding))


def test_random_shift_is_a_translation_per_image() -> None:
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(3)
    out = gd.random_shift(x, 2, generator=generator, padding="zeros")
    assert out.shape == x.shape and out.dtype == torch.uint8
    seen = set()
    for b in range(32):
        matches = [
            (dx, dy)
            for dx in range(-2, 3)
            for dy in range(-2, 3)
            if np.array_equal(out[b].numpy(), numpy_shift(x[b].numpy(), dx, dy, "zeros"))
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 5  # shifts are drawn per image, not once per batch
    again = gd.random_shift(x, 2, generator=torch.Generator().manual_seed(3), padding="zeros")
    assert torch.equal(out, again)


def test_random_shift_identity_float_and_errors() -> None:
    x = torch.rand(4, 3, 5, 5)
    assert torch.equal(gd.random_shift(x, 0), x)
    out = gd.random_shift(x, 1, padding="reflect")
    assert out.dtype == torch.float64 and out.shape == x.shape
    with pytest.raises(ValueError, match="non-negative"):
        gd.random_shift(x, -1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        gd.random_shift(x[0], 1)
    with pytest.raises(ValueError, match="padding"):
        gd.random_shift(x, 1, padding="wrap")  # type: ignore[arg-type]


def test_random_flip() -> None:
    x = torch.randint(0, 256, (16, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(gd.random_flip(x, p=0.0), x)
    assert torch.equal(gd.random_flip(x, p=1.0), x.flip(-1))
    out = gd.random_flip(x, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[b], x[b].flip(-1)) for b in range(16)]
    kept = [torch.equal(out[b], x[b]) for b in range(16)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 16
    with pytest.raises(ValueError, match="probability"):
        gd.random_flip(x, p=1.5)
