"""Decompression bombs and the data budget (genforge/data/limits.py): a header's claim is checked against
the bytes on disk and the budget before anything is allocated, the payload is streamed into one buffer,
and running out of memory is a one-line DataError naming the file, never a MemoryError traceback."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from genforge.data import load_splits
from genforge.data.idx import read_idx
from genforge.data.limits import ENV_MAX_DATA_BYTES, MAX_DATA_BYTES, max_data_bytes
from genforge.data.npz import read_npz
from genforge.errors import DataError

ROOT = Path(__file__).resolve().parent.parent


def idx_bytes(dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def npz_bomb(shape: tuple[int, ...]) -> bytes:
    """A deflated x.npy holding only its header, whose zip entry claims header + shape's bytes, and a
    compressed size that makes the claim look like an ordinary 1000:1 deflate: about 200 bytes on disk."""
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "|u1", "fortran_order": False, "shape": shape})
    header = npy.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", header)
    blob = bytearray(buf.getvalue())
    file_size = len(header) + int(np.prod(shape))
    for magic, sizes_at in ((b"PK\x03\x04", 18), (b"PK\x01\x02", 20)):  # local and central entry
        at = blob.find(magic) + sizes_at
        blob[at:at + 8] = struct.pack("<II", file_size // 1000, file_size)  # compressed, uncompressed
    return bytes(blob)


# Run in a child whose address space is capped at 1 GiB above what the imports took: an allocation of
# the claimed size would raise MemoryError there, so a clean DataError proves nothing that size was made.
CAPPED = textwrap.dedent("""
    import json, resource, sys, time
    from pathlib import Path
    from genforge.data import load_splits
    from genforge.errors import GenforgeError
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))
    t0 = time.perf_counter()
    try:
        load_splits(sys.argv[1])
        outcome = "loaded"
    except GenforgeError as e:
        outcome = "refused: " + str(e)
    except MemoryError as e:
        outcome = "MemoryError"
    print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - t0}))
""")


def run_capped(spec: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", CAPPED, spec], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
def test_npz_bomb_claiming_gigabytes_is_refused_without_allocating(tmp_path):
    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(npz_bomb((4_800_000, 28, 28)))  # claims 3.76 GB
    assert bomb.stat().st_size < 300
    # The budget is raised past the claim, so only the check against the archive's real size can stop it.
    got = run_capped(f"npz:{bomb}", {ENV_MAX_DATA_BYTES: str(2**40)})
    assert got["outcome"].startswith("refused: ") and "MemoryError" not in got["outcome"], got
    message = got["outcome"].removeprefix("refused: ")
    assert str(bomb) in message and "3763200" in message and "cannot hold" in message
    assert "\n" not in message
    assert got["seconds"] < 2.0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
def test_gzip_idx_bomb_is_refused_without_allocating(tmp_path):
    root = tmp_path / "idx"
    root.mkdir()
    # A 1.5 MB gzip whose header claims 1.49 GB: within the 1100:1 that deflate allows for its size, so
    # only the data budget (default 1 GiB) stands between the claim and an allocation the child cannot make.
    claim = (1_900_000, 28, 28)
    payload = np.random.default_rng(6).integers(0, 256, 1_500_000, dtype=np.uint8).tobytes()
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(claim, payload)))
    got = run_capped(f"idx:{root}")
    assert got["outcome"].startswith("refused: "), got
    message = got["outcome"].removeprefix("refused: ")
    assert "train-images-idx3-ubyte.gz" in message and ENV_MAX_DATA_BYTES in message
    assert "1489600000 bytes would exceed the 1073741824 byte data budget" in message
    assert got["seconds"] < 2.0


def test_gzip_idx_claiming_more_than_it_holds(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    path = tmp_path / "short.idx.gz"
    # The header claims 1000 images; the stream holds 10. A plausible claim for its size, so the header
    # check passes, and the stream itself must be found short.
    path.write_bytes(gzip.compress(idx_bytes((1000, 28, 28), images.tobytes())))
    with pytest.raises(DataError, match=r"short.idx.gz: data ends after 7840 of the 784000 bytes"):
        read_idx(path, "images")
    # Claiming more than any 1100:1 deflate of the file's size could give: refused from the header alone.
    path.write_bytes(gzip.compress(idx_bytes((60000, 28, 28), images.tobytes())))
    with pytest.raises(DataError, match="cannot expand to that much"):
        read_idx(path, "images")
    # Holding more than it claims is corrupt too.
    path.write_bytes(gzip.compress(idx_bytes((9, 28, 28), images.tobytes())))
    with pytest.raises(DataError, match="holds more data than its header"):
        read_idx(path, "images")


def test_real_small_idx_still_loads(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = (np.arange(40) % 4).astype(np.uint8)
    for gz in (False, True):
        root = tmp_path / f"gz{gz}"
        root.mkdir()
        for name, arr in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
            blob = idx_bytes(arr.shape, arr.tobytes())
            (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
        assert np.array_equal(read_idx(next(root.glob("train-images*")), "images")[..., 0], images)
        splits = load_splits(f"idx:{root}", val_fraction=0.0, test_fraction=0.0, dedup=False)
        assert len(splits.train) == 40 and splits.class_names == ["0", "1", "2", "3"]
        assert sorted(splits.train.y.tolist()) == sorted(labels.tolist())


def test_budget_is_shared_by_a_source_and_named_in_the_error(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (20, 10, 10), dtype=np.uint8)  # 2000 bytes
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=x, y=np.arange(20) % 2)  # y: 160 bytes of int64
    assert read_npz(path).x.shape == (20, 10, 10, 1)
    monkeypatch.setenv(ENV_MAX_DATA_BYTES, "2100")  # x fits, x + y does not
    with pytest.raises(DataError, match=rf"d.npz: y.npy of shape \(20,\) and dtype int64: 160 bytes on top of "
                                        rf"the 2000 bytes already read from this source would exceed the 2100 "
                                        rf"byte data budget; set {ENV_MAX_DATA_BYTES}"):
        load_splits(f"npz:{path}", image_size=10)
    monkeypatch.setenv(ENV_MAX_DATA_BYTES, "2160")
    assert len(load_splits(f"npz:{path}", image_size=10, val_fraction=0.0, test_fraction=0.0).train) == 20
    monkeypatch.setenv(ENV_MAX_DATA_BYTES, "lots")
    with pytest.raises(DataError, match=f"{ENV_MAX_DATA_BYTES}='lots' must be a positive whole number"):
        load_splits(f"npz:{path}")
    monkeypatch.delenv(ENV_MAX_DATA_BYTES)
    assert max_data_bytes() == MAX_DATA_BYTES == 2**30


def test_npz_member_lengths_must_match_their_headers(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    npy = io.BytesIO()
    np.lib.format.write_array(npy, x)
    path = tmp_path / "lie.npz"
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2):
        with zipfile.ZipFile(path, "w", method) as zf:
            zf.writestr("x.npy", npy.getvalue())
        if method == zipfile.ZIP_BZIP2:  # bzip2 can expand millions of times: no size bound would hold
            with pytest.raises(DataError, match="compressed with zip method 12; .* stored or deflated"):
                read_npz(path)
        else:
            assert np.array_equal(read_npz(path).x[..., 0], x)
    # The header and the entry's sizes both claim 32 more bytes than the stream holds: it runs out.
    longer = npy.getvalue().replace(b"(4, 8, 8)", b"(4, 8, 9)")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", longer)
    blob = bytearray(path.read_bytes())
    for magic, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = blob.find(magic) + at
        blob[pos:pos + 4] = struct.pack("<I", len(longer) + 32)
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="lie.npz.*(data ends after 256 of the 288 bytes|Compressed file ended)"):
        read_npz(path)


def test_fortran_and_big_endian_npz_arrays_load_as_written(tmp_path):
    x = np.asfortranarray(np.random.default_rng(4).integers(0, 256, (3, 6, 5)).astype(">u2"))
    path = tmp_path / "f.npz"
    np.savez(path, x=x)
    assert np.array_equal(read_npz(path).x[..., 0], x.astype(np.uint8))


def test_memory_error_becomes_a_data_error_naming_the_file(tmp_path, monkeypatch):
    import genforge.data
    from genforge.data.limits import allocate

    with pytest.raises(DataError, match=r"^/data/x.idx: not enough memory for 4611686018427387904 bytes"):
        allocate(2**62, np.uint8, "/data/x.idx")  # numpy refuses 4 EiB at once, with a MemoryError
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(7).integers(0, 256, (10, 8, 8), dtype=np.uint8))

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(genforge.data, "clean_pool", out_of_memory)  # past the readers: cleaning's copies
    with pytest.raises(DataError, match=rf"^npz:{path}: ran out of memory while loading it; .*{ENV_MAX_DATA_BYTES} "
                                        r"\(now 1073741824 bytes\)"):
        load_splits(f"npz:{path}", image_size=8)


# The probe of issue 18: peak resident memory of read_idx on a gzip IDX file, in a fresh process. The
# stream is compressible but not trivial (a 4 KiB random block repeated), `D` bytes decompressed.
PEAK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from pathlib import Path
    from genforge.data.idx import read_idx
    path = Path(sys.argv[1])
    def status(field):  # bytes, from this process's own memory map
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))

    # Resident now, not the peak so far: importing torch peaks higher than where it settles. The peak after
    # is VmHWM, not ru_maxrss, which keeps the high-water mark of the parent forked before exec (pytest's).
    before = status("VmRSS:")
    x = read_idx(path, "images")
    after = status("VmHWM:")
    print(json.dumps({"decompressed": int(x.nbytes), "before": before, "after": after}))
""")


def write_gzip_idx(path: Path, n_images: int) -> int:
    block = np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    n_bytes = n_images * 28 * 28
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(idx_bytes((n_images, 28, 28), b""))
        for _ in range(n_bytes // len(block)):
            f.write(block)
        f.write(block[: n_bytes % len(block)])
    return n_bytes


def peak_of_read_idx(path: Path, pythonpath: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    out = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got["growth"] = got["after"] - got["before"]
    return got


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_gzip_idx_peak_memory_is_near_its_decompressed_size(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    n_bytes = write_gzip_idx(path, 80_000)  # 62.7 MB decompressed
    got = peak_of_read_idx(path)
    assert got["decompressed"] == n_bytes
    # Streaming into the one preallocated buffer: growth is the buffer plus the decompressor's chunk.
    # Reading it in one call (as before the fix) held a second copy as bytes: growth about 2x.
    assert got["growth"] < 1.25 * n_bytes, got


if __name__ == "__main__":  # the before/after probe: python tests/test_data_limits.py [PYTHONPATH of the code]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "train-images-idx3-ubyte.gz"
        n = write_gzip_idx(p, int(os.environ.get("PROBE_IMAGES", "300000")))
        t0 = time.perf_counter()
        r = peak_of_read_idx(p, sys.argv[1] if len(sys.argv) > 1 else str(ROOT))
        print(f"gzip {p.stat().st_size} bytes, decompressed {n} bytes: resident grew {r['growth']} bytes "
              f"({r['growth'] / n:.2f}x), peak {r['after']} bytes, {time.perf_counter() - t0:.1f} s")
