"""The command line: the end-to-end path and one-line errors with non-zero exit codes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genforge.cli import main

ROOT = Path(__file__).parent.parent


def genforge_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "genforge", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_train_then_sample_end_to_end(tmp_path):
    run = tmp_path / "run"
    # the recipe validates (eval_every): on mnist5k its shipped evaluator scores, none is trained under the timeout
    r = genforge_cli("train", "mnist5k-vae-mlp", "--out", run, "--max-steps", 3, "--batch-size", 16,
                     "--no-tensorboard", "--eval-n", 100, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"run directory: {run}" in r.stderr and "sample grid" in r.stdout
    r = genforge_cli("sample", run, "--n", 5, "--seed", 1, "--out", tmp_path / "s.npz")
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert f["x"].shape == (5, 28, 28)
    r = genforge_cli("info", run)
    assert r.returncode == 0 and "model: vae-mlp" in r.stdout and "weights_sha256" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "missing.yaml"], "config file not found: missing.yaml"),
    (["train", "genforge/recipes/mnist5k-dcgan.yaml", "--set", "g_lr=-1"], "'g_lr' must be positive"),
    (["train", "genforge/recipes/mnist5k-dcgan.yaml", "--set", "bogus=1"], "unknown key 'bogus'"),
    (["train", "genforge/recipes/mnist5k-dcgan.yaml", "--set", "data=npz:/nonexistent/d.npz"], "/nonexistent/d.npz"),
    (["sample", "/nonexistent/run", "--out", "x.png"], "model not found: /nonexistent/run"),
    (["data", "check", "folder:/nonexistent/dir"], "/nonexistent/dir"),
    (["data", "check", "bogus:thing"], "bogus"),
])
def test_bad_input_is_one_line_nonzero_no_traceback(args, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    runs_before = set((ROOT / "runs").iterdir()) if (ROOT / "runs").is_dir() else set()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("genforge: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    runs_after = set((ROOT / "runs").iterdir()) if (ROOT / "runs").is_dir() else set()
    assert runs_after == runs_before  # a failed start leaves no empty run directory behind


def test_debug_shows_traceback():
    r = genforge_cli("--debug", "train", "missing.yaml")
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_data_check_reports(capsys):
    assert main(["data", "check", "mnist5k"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "read 5000 images, kept 5000, dropped 0" in lines
    assert "splits: train 4000, val 500, test 500" in lines
    header = lines.index("class counts:")
    rows = [line.split() for line in lines[header + 2:]]
    assert [r[0] for r in rows] == [str(c) for c in range(10)]  # every digit, in order
    assert all(r[1:] == ["400", "50", "50"] for r in rows)      # stratified: 400 / 50 / 50 of each class


def test_written_files_follow_the_umask(tmp_path):
    from genforge.io import atomic_write_text

    path = atomic_write_text(tmp_path / "x.txt", "hi")
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600
