"""Encryption at rest: the file format, keys and rotation, and every entry point that writes or reads it."""

import base64
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cryptography")

import genforge
from genforge.cli import main
from genforge.errors import GenforgeError
from genforge import crypto
from genforge.crypto import EncryptionError
from genforge.training import train
from genforge.training.checkpoint import last_checkpoint, load_state

SMALL = 12  # 4 KiB chunks: many chunks from little data


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch):
    monkeypatch.delenv(crypto.ENV_KEY, raising=False)
    monkeypatch.delenv(crypto.ENV_KEY_FILE, raising=False)
    crypto.use_key_file(None)
    yield
    crypto.use_key_file(None)


@pytest.fixture
def keyring():
    return crypto.add_key(None, "k1", "test keyring")


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys" / "genforge.key"
    assert main(["security", "keygen", str(path), "--id", "k1"]) == 0
    return path


def chunks_of(blob: bytes, header: int, log2: int = SMALL) -> list[bytes]:
    body, seg = blob[header:], (1 << log2) + crypto.TAG
    return [body[i:i + seg] for i in range(0, len(body), seg)]


def header_len(key_id: str) -> int:
    return crypto._FIXED + len(key_id) + 16 + 7 + 16


# ------------------------------------------------------------------------------------------- the format


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, 3 * 4096, 50_000])
def test_round_trip_at_chunk_boundaries(keyring, n):
    data = os.urandom(n)
    blob = crypto.encrypt_bytes(data, "w.bin", keyring, SMALL)
    assert blob.startswith(crypto.MAGIC)
    if n >= 16:  # (a byte or two may turn up in random ciphertext by chance)
        assert data[:16] not in blob
    assert crypto.decrypt_bytes(blob, "w.bin", keyring) == data
    assert len(chunks_of(blob, header_len("k1"))) == max(1, -(-n // 4096))


def test_fresh_nonce_per_file(keyring):
    data = b"same plaintext" * 100
    a, b = (crypto.encrypt_bytes(data, "w.bin", keyring) for _ in range(2))
    assert a != b and a[:header_len("k1") - 39] == b[:header_len("k1") - 39]  # same key id, new salt and nonce


def test_wrong_key_is_told_apart_from_alteration(keyring):
    blob = crypto.encrypt_bytes(b"weights", "w.bin", keyring)
    impostor = crypto.add_key(None, "k1", "other keyring")  # same id, another key
    with pytest.raises(EncryptionError, match="'k1' in other keyring is not the key"):
        crypto.decrypt_bytes(blob, "w.bin", impostor)
    stranger = crypto.add_key(None, "k9", "third keyring")
    with pytest.raises(EncryptionError, match="encrypted with key 'k1', which is not in third keyring"):
        crypto.decrypt_bytes(blob, "w.bin", stranger)


def test_any_altered_byte_is_refused(keyring):
    blob = crypto.encrypt_bytes(os.urandom(10_000), "w.bin", keyring, SMALL)
    for pos in [0, 9, 12, header_len("k1") - 1, header_len("k1"), len(blob) // 2, len(blob) - 1]:
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(EncryptionError, match="w.bin"):
            crypto.decrypt_bytes(bytes(bad), "w.bin", keyring)


def test_truncated_reordered_appended_and_renamed_files_are_refused(keyring):
    h = header_len("k1")
    blob = crypto.encrypt_bytes(os.urandom(3 * 4096 + 100), "w.bin", keyring, SMALL)
    c = chunks_of(blob, h)
    assert len(c) == 4
    cases = {
        "cut at a chunk boundary": blob[:h] + b"".join(c[:2]),
        "cut inside a chunk": blob[:-50],
        "cut inside the header": blob[:h - 5],
        "no chunks": blob[:h],
        "first two chunks swapped": blob[:h] + c[1] + c[0] + c[2] + c[3],
        "a chunk dropped": blob[:h] + c[0] + c[2] + c[3],
        "a chunk repeated": blob[:h] + c[0] + c[0] + c[1] + c[2] + c[3],
        "data appended": blob + b"\0" * 16,
    }
    for what, bad in cases.items():
        with pytest.raises(EncryptionError, match="truncated|fails authentication") as info:
            crypto.decrypt_bytes(bad, "w.bin", keyring)
        assert "w.bin" in str(info.value), what
    other = crypto.encrypt_bytes(os.urandom(3 * 4096 + 100), "w.bin", keyring, SMALL)
    with pytest.raises(EncryptionError, match="chunk 1 fails authentication"):  # a chunk from another file
        crypto.decrypt_bytes(blob[:h] + c[0] + chunks_of(other, h)[1] + c[2] + c[3], "w.bin", keyring)
    with pytest.raises(EncryptionError, match="renamed"):
        crypto.decrypt_bytes(blob, "other.bin", keyring)


def test_not_an_encrypted_file_and_future_versions(keyring):
    with pytest.raises(EncryptionError, match="not a genforge encrypted file"):
        crypto.decrypt_bytes(b"PK\x03\x04 a zip", "x.npz", keyring)
    blob = bytearray(crypto.encrypt_bytes(b"x", "w.bin", keyring))
    blob[len(crypto.MAGIC)] = 2
    with pytest.raises(EncryptionError, match="format version 2 is not supported"):
        crypto.decrypt_bytes(bytes(blob), "w.bin", keyring)


def test_streaming_keeps_memory_bounded(tmp_path, keyring):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.writelines(os.urandom(1 << 20) for _ in range(16))  # 16 MiB
    data_hash = _sha(big)
    ring2 = crypto.add_key(keyring, "k2")
    tracemalloc.start()
    try:
        crypto.encrypt_file(big, keyring)
        _, peak_encrypt = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        crypto.rekey_file(big, ring2)
        _, peak_rekey = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        crypto.decrypt_file(big, tmp_path / "plain.bin", ring2)
        _, peak_decrypt = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    peaks = (peak_encrypt, peak_rekey, peak_decrypt)
    assert max(peaks) < 6 * 2**20, peaks  # a few 1 MiB chunks, not the 16 MiB file
    assert crypto.key_id_of(big) == "k2" and _sha(tmp_path / "plain.bin") == data_hash


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- keys


def test_key_file_forms(tmp_path):
    key = os.urandom(32)
    forms = {"hex": key.hex().encode() + b"\n", "base64": base64.b64encode(key) + b"\n", "raw": key,
             "named": b"# comment\n\nold:" + os.urandom(32).hex().encode() + b"\nnew:" + key.hex().encode() + b"\n"}
    for name, data in forms.items():
        path = tmp_path / name
        path.write_bytes(data)
        path.chmod(0o600)
        ring = crypto.read_key_file(path)
        assert ring.keys[ring.primary] == key, name
    assert crypto.read_key_file(tmp_path / "named").primary == "new"  # the last key is the primary
    assert crypto.read_key_file(tmp_path / "raw").primary == crypto.fingerprint(key)


def test_bad_key_files_are_clear_and_never_echo_the_key(tmp_path):
    secret = os.urandom(31).hex()  # one byte short
    path = tmp_path / "short.key"
    path.write_text(f"k:{secret}\n")
    path.chmod(0o600)
    with pytest.raises(EncryptionError, match="key 1: a key must be 64 hex digits") as info:
        crypto.read_key_file(path)
    assert secret not in str(info.value)
    path.write_text(f"k:{os.urandom(32).hex()}\nk:{os.urandom(32).hex()}\n")
    with pytest.raises(EncryptionError, match="'k' appears twice"):
        crypto.read_key_file(path)
    path.write_text("# nothing\n")
    with pytest.raises(EncryptionError, match="holds no key"):
        crypto.read_key_file(path)
    with pytest.raises(EncryptionError, match="key file not found"):
        crypto.read_key_file(tmp_path / "missing.key")


def test_key_file_open_to_others_is_refused(tmp_path):
    path = tmp_path / "k"
    path.write_text(os.urandom(32).hex())
    for mode in (0o644, 0o604, 0o620):
        path.chmod(mode)
        with pytest.raises(EncryptionError, match=f"open to other users \\(mode 0{mode:o}\\).*chmod 600"):
            crypto.read_key_file(path)
    path.chmod(0o640)  # group read is allowed (a service group), group write and any world access are not
    assert crypto.read_key_file(path).primary


def test_keygen_writes_a_private_file(key_file):
    assert key_file.stat().st_mode & 0o777 == 0o600
    ring = crypto.read_key_file(key_file)
    assert list(ring.keys) == ["k1"] and len(ring.keys["k1"]) == 32
    assert main(["security", "keygen", str(key_file)]) == 2  # never overwrites a key file


def test_key_sources_in_order(tmp_path, key_file, monkeypatch):
    with pytest.raises(EncryptionError, match="no encryption key: give --key-file"):
        crypto.load_keyring()
    env_key = os.urandom(32)
    monkeypatch.setenv(crypto.ENV_KEY, "env:" + env_key.hex())
    assert crypto.load_keyring().keys == {"env": env_key}
    monkeypatch.setenv(crypto.ENV_KEY_FILE, str(key_file))
    with pytest.raises(EncryptionError, match="both"):
        crypto.load_keyring()
    monkeypatch.delenv(crypto.ENV_KEY)
    assert crypto.load_keyring().primary == "k1"
    crypto.use_key_file(tmp_path / "missing")  # --key-file wins over the environment
    with pytest.raises(EncryptionError, match="key file not found"):
        crypto.load_keyring()


def test_no_option_takes_a_key_on_the_command_line(tmp_path, capsys):
    import click

    from genforge.cli import cli

    def options(command, ctx):
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:  # hidden: renamed flags that only refuse
                yield from param.opts + param.secondary_opts
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                yield from options(command.get_command(ctx, name), ctx)

    keyish = {o for o in options(cli, click.Context(cli)) if "key" in o}
    assert keyish <= {"--key-file", "--keys-file"}  # paths only (--keys-file: the server's API key hashes)
    secret = os.urandom(32).hex()
    # argparse would take --key as an abbreviation of --key-file: the key is refused and not echoed
    assert main(["security", "decrypt", str(tmp_path / "x"), "--out", str(tmp_path / "y"), "--key", secret]) == 2
    err = capsys.readouterr().err
    assert "never accepted on the command line" in err and secret not in err
    assert not (tmp_path / "y").exists()
    assert main(["info", str(tmp_path), "--key-file", f"k1:{secret}"]) == 2  # the ID:KEY form too
    err = capsys.readouterr().err
    assert "never accepted on the command line" in err and secret not in err


# ------------------------------------------------------------------------------------------- rotation


def test_rotation_old_files_readable_rekey_moves_them(tmp_path, key_file, capsys):
    run = tmp_path / "files"
    run.mkdir()
    crypto.use_key_file(key_file)
    ring1 = crypto.load_keyring()
    a, b = run / "a.bin", run / "sub" / "b.bin"
    crypto.write_encrypted(a, b"alpha" * 1000, ring1)
    crypto.write_encrypted(b, b"beta", ring1)
    (run / "plain.txt").write_text("not encrypted")

    assert main(["security", "keygen", str(key_file), "--add", "--id", "k2"]) == 0
    ring2 = crypto.read_key_file(key_file)
    assert list(ring2.keys) == ["k1", "k2"] and ring2.primary == "k2" and ring2.keys["k1"] == ring1.keys["k1"]
    assert crypto.read_plain(a, ring2) == b"alpha" * 1000  # old files stay readable
    crypto.write_encrypted(run / "c.bin", b"gamma", ring2)  # new files use the new primary
    assert crypto.key_id_of(run / "c.bin") == "k2"

    capsys.readouterr()
    assert main(["security", "rekey", str(run), "--key-file", str(key_file)]) == 0
    assert "2 of 3 encrypted files moved to key 'k2'" in capsys.readouterr().out
    assert crypto.key_id_of(a) == crypto.key_id_of(b) == "k2"
    only_new = crypto.Keyring({"k2": ring2.keys["k2"]}, "k2", "new key only")
    assert crypto.read_plain(a, only_new) == b"alpha" * 1000 and crypto.read_plain(b, only_new) == b"beta"
    assert (run / "plain.txt").read_text() == "not encrypted"


def test_rekey_without_the_old_key_changes_nothing(tmp_path, keyring):
    path = tmp_path / "a.bin"
    crypto.write_encrypted(path, b"data", keyring)
    before = path.read_bytes()
    with pytest.raises(EncryptionError, match="not in"):
        crypto.rekey_file(path, crypto.add_key(None, "k2", "new key only"))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_decrypt_command_writes_nothing_on_a_wrong_key(tmp_path, key_file, keyring, capsys):
    path = tmp_path / "s.npz"
    crypto.write_encrypted(path, b"secret samples", keyring)  # another k1
    assert main(["security", "decrypt", str(path), "--out", str(tmp_path / "p.npz"), "--key-file",
                 str(key_file)]) == 2
    assert "not the key" in capsys.readouterr().err and not (tmp_path / "p.npz").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


# ------------------------------------------------------------------------------------------- entry points


def test_train_encrypt_resume_load_info(tmp_path, digits_npz, key_file, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"model: vae-mlp\ndata: {digits_npz}\nz_dim: 8\nbatch_size: 16\nlog_every: 2\n"
                   "sample_every: 0\ncheckpoint_every: 2\ngrid_n: 4\ntensorboard: false\nnum_threads: 1\n")
    run, plain_run = tmp_path / "run", tmp_path / "plain"
    assert main(["train", str(cfg), "--out", str(run), "--max-steps", "2", "--quiet"]) == 0
    assert main(["train", str(cfg), "--out", str(plain_run), "--max-steps", "2", "--quiet"]) == 0  # plain twin
    capsys.readouterr()
    enc = tmp_path / "enc"
    assert main(["train", str(cfg), "--out", str(enc), "--max-steps", "2", "--quiet", "--encrypt"]) == 2
    assert "no encryption key" in capsys.readouterr().err and not enc.exists()  # found before anything is written

    assert main(["train", str(cfg), "--out", str(enc), "--max-steps", "2", "--quiet", "--encrypt",
                 "--key-file", str(key_file)]) == 0
    ckpt = last_checkpoint(enc)
    for name in ("model.safetensors", "state.pt"):
        assert crypto.key_id_of(ckpt / name) == "k1", name
        assert b"decoder" not in (ckpt / name).read_bytes()  # tensor names are hidden too
    assert "vae-mlp" in (ckpt / "config.json").read_text()  # config.json stays readable

    crypto.use_key_file(None)
    with pytest.raises(EncryptionError, match="no encryption key"):
        genforge.load(enc)
    with pytest.raises(EncryptionError, match="no encryption key"):
        load_state(ckpt)
    crypto.use_key_file(key_file)
    model, twin = genforge.load(enc), genforge.load(run)
    assert np.array_equal(model.sample(4, seed=3), twin.sample(4, seed=3))  # decrypted exactly

    crypto.use_key_file(None)
    capsys.readouterr()
    assert main(["train", "--resume", str(enc), "--max-steps", "4", "--quiet"]) == 2
    assert "no encryption key" in capsys.readouterr().err
    assert main(["train", "--resume", str(enc), "--max-steps", "4", "--quiet", "--key-file", str(key_file)]) == 0
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--quiet"]) == 0
    crypto.use_key_file(key_file)
    assert genforge.load(enc).meta["step"] == 4
    assert crypto.key_id_of(last_checkpoint(enc) / "state.pt") == "k1"
    assert np.array_equal(genforge.load(enc).sample(4, seed=3), genforge.load(run).sample(4, seed=3))  # exact resume

    capsys.readouterr()
    assert main(["info", str(enc), "--key-file", str(key_file)]) == 0
    assert "weights file: encrypted with key 'k1'" in capsys.readouterr().out
    assert main(["info", str(enc)]) == 2
    err = capsys.readouterr().err
    assert "no encryption key" in err and "Traceback" not in err


def test_altered_encrypted_checkpoint_is_one_clear_error(tmp_path, tiny_config, keyring, capsys, monkeypatch):
    monkeypatch.setenv(crypto.ENV_KEY, "k1:" + keyring.keys["k1"].hex())
    run = tmp_path / "r"
    train(tiny_config("gan-mlp", max_steps=2, encrypt=True), run, quiet=True)
    weights = last_checkpoint(run) / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0x80
    weights.write_bytes(bytes(blob))
    assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "fails authentication" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()

    # a malicious pickle, encrypted with the right key, is still refused by weights_only
    evil = b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR."
    crypto.write_encrypted(last_checkpoint(run) / "state.pt", evil, keyring)
    with pytest.raises(GenforgeError, match="SHA-256 does not match state.json"):  # the digest of the plain bytes
        load_state(last_checkpoint(run))
    (last_checkpoint(run) / "state.json").unlink()  # as a checkpoint from before the digest
    with pytest.raises(GenforgeError, match="not a valid resume state"):
        load_state(last_checkpoint(run))
    assert not (tmp_path / "pwned").exists()


def test_sample_encrypt_npz_then_read_and_eval(tmp_path, tiny_config, key_file, capsys):
    run = tmp_path / "r"
    train(tiny_config("vae-mlp", max_steps=2), run, quiet=True)
    out = tmp_path / "samples.npz"
    assert main(["sample", str(run), "--n", "24", "--seed", "5", "--out", str(out), "--encrypt",
                 "--key-file", str(key_file)]) == 0
    assert crypto.key_id_of(out) == "k1"
    assert main(["sample", str(run), "--n", "24", "--seed", "5", "--out", str(tmp_path / "plain.npz")]) == 0
    with np.load(tmp_path / "plain.npz") as f:
        want = f["x"]

    from genforge.data.npz import read_npz
    from genforge.metrics.evaluate import read_samples

    with pytest.raises(EncryptionError, match="no encryption key"):
        read_samples(out)
    crypto.use_key_file(key_file)
    x, y = read_samples(out)
    assert np.array_equal(x, want) and y is None
    assert np.array_equal(read_npz(out).x[..., 0], want)  # also usable as training data: npz:FILE

    crypto.use_key_file(None)
    capsys.readouterr()
    assert main(["--key-file", str(key_file), "data", "check", f"npz:{out}"]) == 0
    assert "24" in capsys.readouterr().out
    assert main(["eval", str(out), "--data", "mnist5k", "--n", "24", "--no-cas"]) == 2  # no key
    assert "no encryption key" in capsys.readouterr().err
    assert main(["--key-file", str(key_file), "eval", str(out), "--data", "mnist5k", "--n", "24", "--no-cas"]) == 0
    assert "FID" in capsys.readouterr().out
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "g.png"), "--encrypt",
                 "--key-file", str(key_file)]) == 2
    assert "only .npz sample sets can be written encrypted" in capsys.readouterr().err


def test_encrypt_command_on_an_existing_run(tmp_path, tiny_config, key_file, capsys):
    run = tmp_path / "r"
    train(tiny_config("vae-mlp", max_steps=2), run, quiet=True)
    before = genforge.load(run).sample(4, seed=0)
    assert main(["security", "encrypt", str(run), "--key-file", str(key_file)]) == 0
    assert "encrypted 2 files" in capsys.readouterr().out
    assert all(crypto.is_encrypted(p) for p in run.rglob("*") if p.name in ("model.safetensors", "state.pt"))
    assert main(["security", "status", str(run)]) == 0
    assert capsys.readouterr().out.count("encrypted, key 'k1'") == 2
    crypto.use_key_file(key_file)
    assert np.array_equal(genforge.load(run).sample(4, seed=0), before)


def test_encrypted_run_writes_no_sample_grids(tmp_path, digits_npz, key_file, capsys):
    """A grid PNG of a model trained on confidential data would show that data in the clear."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"model: vae-mlp\ndata: {digits_npz}\nz_dim: 8\nbatch_size: 16\nlog_every: 2\n"
                   "sample_every: 1\ncheckpoint_every: 2\ngrid_n: 4\ntensorboard: false\nnum_threads: 1\n")
    plain, enc = tmp_path / "plain", tmp_path / "enc"
    assert main(["train", str(cfg), "--out", str(plain), "--max-steps", "2"]) == 0
    assert sorted(p.name for p in (plain / "samples").glob("step_*.png"))  # the plain twin draws grids
    capsys.readouterr()
    assert main(["train", str(cfg), "--out", str(enc), "--max-steps", "2", "--encrypt",
                 "--key-file", str(key_file)]) == 0
    assert "no sample grids are written" in capsys.readouterr().err
    assert not list(enc.rglob("*.png"))


def test_train_takes_the_keyring_as_a_parameter(tmp_path, tiny_config, keyring, monkeypatch):
    """No key file, no environment, no --key-file global: the keyring given to train() encrypts the
    checkpoints and reads them back on resume."""
    monkeypatch.delenv(crypto.ENV_KEY, raising=False)
    monkeypatch.delenv(crypto.ENV_KEY_FILE, raising=False)
    crypto.use_key_file(None)
    run = tmp_path / "r"
    train(tiny_config("vae-mlp", max_steps=2, encrypt=True), run, quiet=True, keyring=keyring)
    assert crypto.key_id_of(last_checkpoint(run) / "state.pt") == "k1"
    assert train(tiny_config("vae-mlp", max_steps=4, encrypt=True), run, resume=True, quiet=True,
                 keyring=keyring).step == 4
    with pytest.raises(crypto.EncryptionError, match="no encryption key"):  # and nothing else supplies one
        train(tiny_config("vae-mlp", max_steps=6, encrypt=True), run, resume=True, quiet=True)
