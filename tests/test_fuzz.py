"""Fuzzed inputs: every reader of a user's file either loads it or raises genforge's own clear error.

Property-based (hypothesis): each test starts from a valid file and mutates it (flipped, set, inserted and
deleted bytes, truncation, header fields set to boundary values) or builds a structurally valid file with
hostile contents; any exception other than a :class:`GenforgeError` subclass is a bug. Not crashing is not
enough: each property first checks that its reader loads the unmutated seeds, and then that its cases ended
both ways where both must (see :func:`outcomes`), so a reader that refuses everything fails. CI runs a bounded,
derandomized number of cases per reader (``GENFORGE_FUZZ_EXAMPLES``, default 60); ``benchmarks/fuzz.py``
runs many more with fresh randomness and records time and case count in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import atexit
import collections
import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from genforge.errors import GenforgeError

EXAMPLES = int(os.environ.get("GENFORGE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="GENFORGE_FUZZ_EXAMPLES" not in os.environ,
                database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                print_blob=True)
ROOT = Path(__file__).parent.parent
WORK = Path(tempfile.mkdtemp(prefix="genforge-fuzz-"))  # one file per reader, rewritten by every case
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
BOUNDARY = [0, 1, 2, 3, 7, 12, 14, 99, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1]


OUTCOMES: collections.Counter = collections.Counter()  # loaded / refused, for benchmarks/fuzz.py and `outcomes`
BOTH = ("loaded", "refused")
# Below this many cases a property may not reach every outcome, so only the valid seeds are checked.
ENOUGH = 30


def loads_or_refuses(fn, *args, **kwargs):
    """The property: ``fn`` returns, or raises a GenforgeError. Anything else propagates and fails the test."""
    try:
        result = fn(*args, **kwargs)
    except GenforgeError:
        OUTCOMES["refused"] += 1
        return None
    OUTCOMES["loaded"] += 1
    return result


def outcomes(*valid, must=BOTH):
    """Wrap a property so that "no crash" is not all it proves: a reader that refuses everything (or
    accepts everything) would pass that.

    First each of ``valid`` runs: a call of the property's reader on an unmutated seed, which must return
    something other than None (it loaded). Then the property's cases run, and each outcome in ``must``
    (keys of OUTCOMES) must have happened in at least one case. ``must`` is ("loaded", "refused") where
    generated inputs are valid often enough that a run without one is a broken reader (hostile npz arrays,
    run pointers); where most mutations break the input, how many survive varies from run to run (0 of 60
    in some fresh-randomness runs of benchmarks/fuzz.py), so only "refused" is required of the cases and
    the valid seeds stand for "loaded".
    """

    def wrap(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            for call in valid:
                assert call() is not None, f"{test.__name__}: a valid seed was refused: {call.__doc__}"
            before = OUTCOMES.copy()
            test(*args, **kwargs)
            seen = OUTCOMES - before
            if EXAMPLES >= ENOUGH:
                missing = [m for m in must if not seen[m]]
                assert not missing, f"{test.__name__}: no case ended {' or '.join(missing)}: {dict(seen)}"

        return run

    return wrap


@st.composite
def mutated(draw, seed: bytes, header: int = 64, fields: tuple[tuple[int, str], ...] = ()):
    """``seed`` after 1-4 mutations, half of them aimed at the first ``header`` bytes; ``fields`` are
    (offset, struct format) of header fields that may be set to boundary values."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        pos = draw(st.integers(0, max(0, min(n, header) - 1)) | st.integers(0, max(0, n - 1)))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"] + ["field"] * bool(fields)))
        if op == "flip" and n:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "set" and n:
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[draw(st.integers(0, n)):]
        elif op == "field":
            offset, fmt = draw(st.sampled_from(fields))
            value = draw(st.sampled_from(BOUNDARY)) % (1 << (8 * struct.calcsize(fmt)))
            if offset + struct.calcsize(fmt) <= len(data):
                data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(data)


def write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------------ IDX


def idx_bytes(x: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, x.ndim]) + struct.pack(f">{x.ndim}I", *x.shape) + x.tobytes()


IDX_IMAGES = idx_bytes(np.random.default_rng(0).integers(0, 256, (3, 6, 5), dtype=np.uint8))
IDX_LABELS = idx_bytes(np.array([1, 0, 2], dtype=np.uint8))
IDX_FIELDS = ((2, ">B"), (3, ">B"), (4, ">I"), (8, ">I"), (12, ">I"))


def valid_idx():
    """the IDX seeds, raw and gzipped"""
    from genforge.data.idx import read_idx

    got = [loads_or_refuses(read_idx, write(f"v{gz}.idx", gzip.compress(data) if gz else data), kind)
           for data, kind in ((IDX_IMAGES, "images"), (IDX_LABELS, "labels")) for gz in (False, True)]
    return None if any(g is None for g in got) else got


@outcomes(valid_idx, must=("refused",))  # most mutations break the 16-byte header or the length
@FUZZ
@given(data=mutated(IDX_IMAGES, 16, IDX_FIELDS) | mutated(IDX_LABELS, 8, IDX_FIELDS),
       kind=st.sampled_from(["images", "labels"]), gz=st.booleans())
def test_idx_reader(data, kind, gz):
    from genforge.data.idx import read_idx

    x = loads_or_refuses(read_idx, write("f.idx", gzip.compress(data, mtime=0) if gz else data), kind)
    if x is not None:
        assert x.dtype == np.uint8 and x.ndim == (4 if kind == "images" else 1)


@outcomes(valid_idx, must=("refused",))  # most mutations break the 16-byte header or the length
@FUZZ
@given(data=mutated(gzip.compress(IDX_IMAGES, mtime=0), 24))
def test_idx_reader_gzip_stream(data):
    from genforge.data.idx import read_idx

    loads_or_refuses(read_idx, write("g.idx.gz", data), "images")


def load_idx_directory(images: bytes, labels: bytes):
    from genforge.data import load_splits

    root = WORK / "idx"
    write("idx/train-images-idx3-ubyte", images)
    write("idx/train-labels-idx1-ubyte", labels)
    return loads_or_refuses(load_splits, f"idx:{root}", image_size=6, val_fraction=0.0, test_fraction=0.0)


def valid_idx_directory():
    """the IDX images and labels seeds as an idx: directory"""
    return load_idx_directory(IDX_IMAGES, IDX_LABELS)


@outcomes(valid_idx_directory, must=("refused",))  # 1-4 mutations in each of two files: rarely both valid
@FUZZ
@given(images=mutated(IDX_IMAGES, 16, IDX_FIELDS), labels=mutated(IDX_LABELS, 8, IDX_FIELDS))
def test_idx_directory_source(images, labels):
    load_idx_directory(images, labels)


# ------------------------------------------------------------------------------------------------ image folder


def image_bytes(fmt: str, mode: str, size=(8, 8)) -> bytes:
    rng = np.random.default_rng(1)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    img = img.convert(mode) if mode not in ("L", "RGB") else img
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {"a.png": image_bytes("PNG", "L"), "b.png": image_bytes("PNG", "RGB"), "c.gif": image_bytes("GIF", "P"),
          "d.bmp": image_bytes("BMP", "RGB"), "e.jpg": image_bytes("JPEG", "L"),
          "f.png": image_bytes("PNG", "I;16"), "g.webp": image_bytes("WEBP", "RGB")}


def valid_images():
    """every image seed alone in a folder, channels=0"""
    from genforge.data.folder import read_folder

    decoded = 0
    for name, blob in IMAGES.items():
        root = WORK / "valid-folder"
        shutil.rmtree(root, ignore_errors=True)
        write(f"valid-folder/{name}", blob)
        result = loads_or_refuses(read_folder, root, 8, 0)
        decoded += result is not None and len(result[0].x) == 1
    return decoded if decoded == len(IMAGES) else None


# read_folder refuses a folder only when it holds no image file at all, so here the outcomes are counted
# per file: mutated images must be rejected into the report (few survive a mutation and a channel choice,
# so "decoded" rests on the valid seeds).
@outcomes(valid_images, must=("loaded", "image rejected"))
@FUZZ
@given(name=st.sampled_from(sorted(IMAGES)), data=st.data(), channels=st.sampled_from([0, 1, 3]))
def test_image_folder_loader(name, data, channels):
    from genforge.data.folder import read_folder

    blob = data.draw(mutated(IMAGES[name], 64))
    root = WORK / "folder"
    for p in root.glob("*") if root.exists() else []:
        p.unlink()
    write(f"folder/{name}", blob)
    write("folder/ok.png", IMAGES["a.png"])
    result = loads_or_refuses(read_folder, root, 8, channels)
    if result is not None:
        pool, _, _ = result
        assert len(pool.x) + len(pool.rejected) == 2
        mutated_one = str(root / name)
        OUTCOMES["image decoded"] += mutated_one in (pool.names or [])
        OUTCOMES["image rejected"] += any(n == mutated_one for _, n, _ in pool.rejected)


# ------------------------------------------------------------------------------------------------ npz


def npz_bytes(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


_rng = np.random.default_rng(2)
NPZ_SEEDS = [npz_bytes(x=_rng.integers(0, 256, (3, 5, 5), dtype=np.uint8), y=np.array([0, 1, 2])),
             npz_bytes(True, x=_rng.random((2, 4, 4, 3)).astype(np.float32))]


def read_both(path: Path):
    """The training-data reader (npz:FILE) and the samples reader of genforge eval share the format."""
    from genforge.data.npz import read_npz
    from genforge.metrics.evaluate import check_images, read_samples

    pool = loads_or_refuses(read_npz, path)
    if pool is not None:
        assert pool.x.dtype == np.uint8 and pool.x.ndim == 4
    samples = loads_or_refuses(read_samples, path)
    if samples is not None:
        loads_or_refuses(check_images, samples[0], str(path))


def valid_npz_seeds():
    """the npz seeds, through both readers"""
    from genforge.data.npz import read_npz
    from genforge.metrics.evaluate import read_samples

    got = []
    for i, seed in enumerate(NPZ_SEEDS):
        path = write(f"v{i}.npz", seed)
        got += [loads_or_refuses(read_npz, path), loads_or_refuses(read_samples, path)]
    return None if any(g is None for g in got) else got


def valid_npz_arrays():
    """uint8 (2, 5, 5) images with labels, stored and compressed"""
    from genforge.data.npz import read_npz

    x, y = np.full((2, 5, 5), 7, np.uint8), np.array([0, 1])
    got = [loads_or_refuses(read_npz, write("va.npz", npz_bytes(c, x=x, y=y))) for c in (False, True)]
    return None if any(g is None for g in got) else got


def zip_fields(archive: bytes) -> tuple[tuple[int, str], ...]:
    """Flags (bit 0: encrypted) and compression method of every local and central zip header."""
    fields = []
    for magic, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = archive.find(magic)
        while start >= 0:
            fields += [(start + at, "<H"), (start + at + 2, "<H")]
            start = archive.find(magic, start + 1)
    return tuple(fields)


@outcomes(valid_npz_seeds, must=("refused",))
@FUZZ
@given(data=st.sampled_from(NPZ_SEEDS).flatmap(lambda s: mutated(s, 160, zip_fields(s))))
def test_npz_reader_mutated(data):
    read_both(write("m.npz", data))


@outcomes(valid_npz_arrays)
@FUZZ
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=5),
       dtype=st.sampled_from(["u1", "i2", "<i8", ">u2", "f2", "<f4", ">f8", "?", "c8", "V3", "U2", "M8[s]"]),
       fill=st.sampled_from([0.0, 1.0, 0.5, 255.0, 256.0, -1.0, np.nan, np.inf]),
       y=st.none() | st.lists(st.integers(-2, 300), max_size=6), compressed=st.booleans())
def test_npz_reader_hostile_arrays(shape, dtype, fill, y, compressed):
    with np.errstate(invalid="ignore", over="ignore"):
        try:
            x = np.full(shape, fill).astype(dtype)
        except (ValueError, OverflowError, TypeError):
            x = np.zeros(shape, dtype=dtype)
    arrays = {"x": x} if y is None else {"x": x, "y": np.array(y, dtype=np.int64)}
    read_both(write("h.npz", npz_bytes(compressed, **arrays)))


# ------------------------------------------------------------------------------------------------ model files


def model_dir() -> Path:
    from genforge.models import build_networks
    from genforge.models.files import save_model

    path = WORK / "model-seed"
    if not path.exists():
        torch.manual_seed(0)
        nets = build_networks("dcgan", (1, 28, 28), 8, 4)
        save_model(path, nets, {"model": "dcgan", "example_shape": [1, 28, 28], "z_dim": 8, "base_channels": 4,
                                "num_classes": 0, "d_options": {"norm": "batch", "spectral_norm": False,
                                                                "mbstd": False},
                                "class_names": None, "value_range": "-1,1", "data": "mnist5k"})
    return path


def load_and_sample(directory: Path):
    """The samples, or None where loading or sampling was refused."""
    import genforge
    from genforge.generation import sample

    model = loads_or_refuses(genforge.load, directory)
    if model is not None:  # a model that loads must sample, or refuse the controls clearly
        return loads_or_refuses(sample, model, 2, seed=0)
    return None


def valid_model():
    """the seed model directory, loaded and sampled"""
    return load_and_sample(model_dir())


def valid_run():
    """a run directory whose last.json points at its one checkpoint"""
    run = WORK / "valid-run"
    if not (run / "checkpoints" / "step_00000001").exists():
        shutil.copytree(model_dir(), run / "checkpoints" / "step_00000001")
    (run / "checkpoints" / "last.json").write_text(json.dumps({"dir": "step_00000001"}))
    return load_and_sample(run)


def write_model(weights: bytes, meta: dict | bytes) -> Path:
    d = WORK / "model"
    d.mkdir(exist_ok=True)
    (d / "model.safetensors").write_bytes(weights)
    (d / "config.json").write_bytes(meta if isinstance(meta, bytes) else json.dumps(meta).encode())
    return d


@outcomes(valid_model, must=("refused",))  # a mutation of the header or the weights seldom still loads
@FUZZ
@given(data=st.data(), rehash=st.booleans())
def test_safetensors_loader(data, rehash):
    seed = model_dir()
    weights = (seed / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", weights[:8])
    blob = data.draw(mutated(weights, 8 + n, ((0, "<Q"), (4, "<I"))))
    meta = json.loads((seed / "config.json").read_text())
    if rehash:  # the hash matches the mutated file, so the header and tensor checks are what stands guard
        meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    load_and_sample(write_model(blob, meta))


@outcomes(valid_model, must=("refused",))  # a header rewritten as other JSON is almost never still valid
@FUZZ
@given(data=st.data())
def test_safetensors_header_json(data):
    """A safetensors header rewritten as other JSON: wrong types, offsets, dtypes, shapes, nesting."""
    seed = model_dir()
    weights = (seed / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", weights[:8])
    header, payload = json.loads(weights[8:8 + n]), weights[8 + n:]
    key = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    entry = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    value = data.draw(JSON)
    if entry is None:
        header[key] = value
    else:
        header[key][entry] = value
    if data.draw(st.booleans()):
        header = data.draw(JSON)
    raw = json.dumps(header).encode()
    if data.draw(st.integers(0, 9)) == 0:  # nested deeper than Python's recursion limit
        raw = b"[" * 100_000
    blob = struct.pack("<Q", len(raw)) + raw + payload
    meta = json.loads((seed / "config.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    load_and_sample(write_model(blob, meta))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.sampled_from(BOUNDARY)
                    | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=4),
                    max_leaves=12)


@outcomes(valid_model, must=("refused",))
@FUZZ
@given(data=st.data())
def test_model_config_json(data):
    seed = model_dir()
    weights = (seed / "model.safetensors").read_bytes()
    meta = json.loads((seed / "config.json").read_text())
    how = data.draw(st.sampled_from(["value", "delete", "bytes", "deep"]))
    if how == "value":
        meta[data.draw(st.sampled_from(sorted(meta) + ["extra"]))] = data.draw(JSON | st.sampled_from(
            ["dcgan", "vae-conv", "ddpm", "gan-mlp", [1, 28, 28], [3, 28, 28], [1, 8, 8], "0,1", "-1,1"]))
        raw = json.dumps(meta).encode()
    elif how == "delete":
        del meta[data.draw(st.sampled_from(sorted(meta)))]
        raw = json.dumps(meta).encode()
    elif how == "bytes":
        raw = data.draw(mutated(json.dumps(meta).encode(), 4096))
    else:  # nested deeper than Python's recursion limit
        raw = b'{"model": ' + b"[" * data.draw(st.integers(10, 100_000)) + b"}"
    load_and_sample(write_model(weights, raw))


@outcomes(valid_run)
@FUZZ
@given(pointer=st.sampled_from(["last.json", "best.json"]), value=JSON | st.sampled_from(
    ["step_00000001", "", ".", "..", "../model", "/", "step_1/../..", "model-seed"]).map(lambda d: {"dir": d}),
       deep=st.booleans())
def test_run_directory_pointers(pointer, value, deep):
    """A run directory's checkpoints/last.json and best.json, rewritten."""
    from genforge.training.checkpoint import last_checkpoint

    run = WORK / "run"
    ckpts = run / "checkpoints"
    if not (ckpts / "step_00000001").exists():
        shutil.copytree(model_dir(), ckpts / "step_00000001")
    for p in ckpts.glob("*.json"):
        p.unlink()
    raw = b"[" * 100_000 if deep else json.dumps(value).encode()
    (ckpts / pointer).write_bytes(raw)
    load_and_sample(run)
    found = loads_or_refuses(last_checkpoint, run)
    assert found is None or found.parent == ckpts


# ------------------------------------------------------------------------------------------------ config


RECIPE = (ROOT / "genforge" / "recipes" / "mnist5k-dcgan.yaml").read_bytes()
_FIELDS = sorted(__import__("genforge.config", fromlist=["FIELDS"]).FIELDS)
YAML_SCALARS = st.sampled_from(["", "~", "yes", "no", "on", "1e-4", "1e400", ".nan", ".inf", "-.inf", "0x10", "0o7",
                                "2001-02-30", "2001-12-14t21:59:43.10-05:00", "!!binary aGk=", "&a 1", "*a", "[1, 2",
                                "{a: 1}", "[0.5, 0.999]", "'x'", '"\\x00"', "- a", "? a", "!!python/object:os.system",
                                "12:30:00", "1_000", "0b101", "+1", "-0", "@", "[" * 3000, "1" + "0" * 400])


def valid_recipe():
    """a recipe as shipped"""
    from genforge.config import load_config

    return loads_or_refuses(load_config, write("v.yaml", RECIPE))


def valid_override():
    """the overrides max_steps=5 and g_betas=[0.5, 0.9]"""
    from genforge.config import load_config

    return loads_or_refuses(load_config, None, ["max_steps=5", "g_betas=[0.5, 0.9]"])


@outcomes(valid_recipe, must=("refused",))
@FUZZ
@given(data=st.data())
def test_config_parser(data):
    from genforge.config import Config, load_config

    how = data.draw(st.sampled_from(["bytes", "fields", "yaml"]))
    if how == "bytes":
        text = data.draw(mutated(RECIPE, 256))
    elif how == "fields":
        values = data.draw(st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=5),
                                           JSON | YAML_SCALARS, max_size=4))
        text = yaml.safe_dump(values).encode()
    else:
        keys = data.draw(st.lists(st.sampled_from(_FIELDS), min_size=1, max_size=3))
        text = "".join(f"{k}: {data.draw(YAML_SCALARS)}\n" for k in keys).encode()
    cfg = loads_or_refuses(load_config, write("c.yaml", text))
    if cfg is not None:
        assert isinstance(cfg, Config)
        for name, value in cfg.to_dict().items():  # an accepted config holds only finite numbers
            if isinstance(value, float):
                assert np.isfinite(value), (name, value)


@outcomes(valid_override, must=("refused",))  # random text is rarely a valid override
@FUZZ
@given(item=st.text(max_size=30) | st.tuples(st.sampled_from(_FIELDS), YAML_SCALARS | st.text(max_size=12)).map(
    lambda kv: f"{kv[0]}={kv[1]}"))
def test_config_overrides(item):
    from genforge.config import load_config

    loads_or_refuses(load_config, None, [item])


# ------------------------------------------------------------------------------------------------ encrypted files


@functools.cache
def fuzz_keyring():
    pytest.importorskip("cryptography")
    from genforge import crypto

    return crypto.add_key(None, "fuzz", "the fuzz keyring")


PLAIN = os.urandom(3 * 4096 + 77)


def valid_ciphertext():
    """the seed ciphertext, decrypted to its plaintext"""
    from genforge import crypto

    keyring = fuzz_keyring()
    out = loads_or_refuses(crypto.decrypt_bytes, crypto.encrypt_bytes(PLAIN, "x.bin", keyring, 12), "x.bin", keyring)
    return out if out == PLAIN else None


def valid_key_files():
    """a bare 64-hex-digit key and a named one"""
    from genforge import crypto

    got = [loads_or_refuses(crypto.parse_keyring, k, "valid key file")
           for k in (os.urandom(32).hex().encode(), b"k:" + os.urandom(32).hex().encode())]
    return None if any(g is None for g in got) else got


@outcomes(valid_ciphertext, must=("refused",))  # authenticated: a mutation that changes a byte never decrypts
@FUZZ
@given(data=st.data())
def test_encrypted_reader(data):
    """Mutated ciphertext never decrypts to anything but the original plaintext: authenticated or refused."""
    from genforge import crypto

    keyring = fuzz_keyring()
    blob = crypto.encrypt_bytes(PLAIN, "x.bin", keyring, 12)
    h = crypto._FIXED + len("fuzz") + 39
    fields = ((8, ">B"), (9, ">B"), (10, ">B"))
    bad = data.draw(mutated(blob, h, fields))
    out = loads_or_refuses(crypto.decrypt_bytes, bad, "x.bin", keyring)
    assert out is None or out == PLAIN


@outcomes(valid_key_files, must=("refused",))
@FUZZ
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.sampled_from([os.urandom(32).hex().encode(), b"k:" + os.urandom(32).hex().encode()]).flatmap(
           lambda s: mutated(s, 80)))
def test_key_file_parser(data):
    from genforge import crypto

    ring = loads_or_refuses(crypto.parse_keyring, data, "fuzzed key file")
    if ring is not None:
        assert ring.primary in ring.keys and all(len(k) == 32 for k in ring.keys.values())


# ------------------------------------------------------------------------------------------------ found by fuzzing
# Each input below crashed a reader with a non-genforge exception before the fix named beside it.


def _zip_member_data_offset(archive: bytes) -> int:
    name_len, extra_len = struct.unpack("<HH", archive[26:30])
    return 30 + name_len + extra_len


def _compressed_npz() -> bytes:
    return npz_bytes(True, x=np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28))


def _with_central_field(archive: bytes, at: int, value: int) -> bytes:
    start = archive.find(b"PK\x01\x02")
    return archive[:start + at] + struct.pack("<H", value) + archive[start + at + 2:]


def _corrupt_deflate() -> bytes:
    blob = bytearray(_compressed_npz())
    blob[_zip_member_data_offset(blob)] ^= 0xFF  # zlib.error: invalid code lengths set
    return bytes(blob)


@pytest.mark.parametrize("what, data", [pytest.param(w, d, id=w.split(" (")[0]) for w, d in [
    ("deflate stream corrupt (zlib.error)", _corrupt_deflate()),
    ("unknown compression method 99 (NotImplementedError)", _with_central_field(_compressed_npz(), 10, 99)),
    ("member marked encrypted (RuntimeError)", _with_central_field(_compressed_npz(), 8, 1)),
    ("no images (reshape ValueError)", npz_bytes(x=np.zeros((0, 5, 5), np.int16))),
    ("images without pixels (min of empty array)", npz_bytes(x=np.zeros((1, 0, 0), np.int16))),
    ("float images without pixels", npz_bytes(x=np.zeros((2, 0, 5, 1), np.float32))),
]])
def test_found_npz(what, data):
    from genforge.data.npz import read_npz
    from genforge.metrics.evaluate import check_images, read_samples

    path = write("found.npz", data)
    with pytest.raises(GenforgeError, match="found.npz"):
        read_npz(path)
    with pytest.raises(GenforgeError):
        check_images(read_samples(path)[0], str(path))


@pytest.mark.parametrize("text, message", [
    (b"\xa3 a recipe\nmodel: dcgan\n", "not UTF-8 text"),                      # UnicodeDecodeError
    (b"max_seconds: 2001-02-30\n", "not valid YAML"),                          # ValueError from PyYAML
    (b"g_betas: " + b"[" * 3000 + b"\n", "nested too deeply"),                # RecursionError
    (b"max_seconds: .nan\n", "'max_seconds' must be a finite number"),        # was accepted: NaN passes every check
    (b"d_lr: 1" + b"0" * 400 + b"\n", "'d_lr' must be a finite number"),     # OverflowError in float()
], ids=["not-utf8", "impossible-date", "nested-too-deeply", "nan", "overflow"])
def test_found_config(text, message):
    from genforge.config import load_config
    from genforge.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(write("found.yaml", text))


def test_found_config_override():
    from genforge.config import load_config
    from genforge.errors import ConfigError

    with pytest.raises(ConfigError, match="'acgan_weight' must be a number, got '2001-02-30'"):
        load_config(None, ["acgan_weight=2001-02-30"])  # was ValueError from PyYAML's date constructor


def _model_with_header(header_raw: bytes | None = None, edit=None) -> Path:
    seed = model_dir()
    weights = (seed / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", weights[:8])
    header, payload = json.loads(weights[8:8 + n]), weights[8 + n:]
    if edit:
        edit(header)
    raw = header_raw if header_raw is not None else json.dumps(header).encode()
    blob = struct.pack("<Q", len(raw)) + raw + payload
    meta = json.loads((seed / "config.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    return write_model(blob, meta)


def _first(header):
    return header[min(k for k in header if k != "__metadata__")]


def _swap_offsets(header):  # two tensors of the same size trade places: allowed; one shifted by 4 bytes: not
    entry = _first(header)
    entry["data_offsets"] = [entry["data_offsets"][0] + 4, entry["data_offsets"][1] + 4]


@pytest.mark.parametrize("what, directory, message", [pytest.param(*case, id=case[0].split(" (")[0]) for case in [
    ("header is a JSON list (AttributeError)", lambda: _model_with_header(b"[]"), "not a JSON object"),
    ("header is null", lambda: _model_with_header(b"null"), "not a JSON object"),
    ("header nested too deeply (RecursionError)", lambda: _model_with_header(b"[" * 100_000), "not valid JSON"),
    ("offsets are strings (TypeError)", lambda: _model_with_header(
        edit=lambda h: _first(h).update(data_offsets=["0", "4"])), "outside the file"),
    ("shape is a number (TypeError)", lambda: _model_with_header(edit=lambda h: _first(h).update(shape=3)),
     "config.json needs"),
    ("tensors overlap (SafetensorError)", lambda: _model_with_header(edit=_swap_offsets),
     "outside the file|overlaps"),
    ("config.json nested too deeply (RecursionError)",
     lambda: write_model((model_dir() / "model.safetensors").read_bytes(), b'{"model": ' + b"[" * 100_000 + b"}"),
     "not valid JSON"),
]])
def test_found_model_files(what, directory, message):
    import genforge

    with pytest.raises(GenforgeError, match=message):
        genforge.load(directory())


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"dir": 5}', b'{"dir": ["step_1"]}', b'{"dir": "../elsewhere"}'],
                         ids=["nested-too-deeply", "number", "list", "outside"])
def test_found_run_pointers(raw):
    """RecursionError, then TypeError from ``ckpts / 5`` in resolve(); a pointer out of checkpoints/ was followed."""
    import genforge
    from genforge.training.checkpoint import last_checkpoint

    run = WORK / "pointer-run"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "last.json").write_bytes(raw)
    with pytest.raises(GenforgeError, match="not a valid checkpoint pointer"):
        genforge.load(run)
    with pytest.raises(GenforgeError, match="not a valid checkpoint pointer"):
        last_checkpoint(run)
