"""An installed wheel trains a bundled recipe by name: the recipes ship in the package, the entry point works."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_wheel_trains_a_recipe_by_name(tmp_path):
    # build from a copy, so the checkout gets no build/ or egg-info folders
    src = tmp_path / "src"
    shutil.copytree(ROOT / "genforge", src / "genforge", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(src)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = wheels.glob("genforge-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr

    cwd = tmp_path / "elsewhere"  # not the checkout: nothing may be found through the working directory
    cwd.mkdir()
    r = subprocess.run([str(venv / "bin/python"), "-c", "import genforge; print(genforge.__file__)"],
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
    assert Path(r.stdout.strip()).resolve().is_relative_to(venv.resolve()), r.stdout  # the wheel's, not the repo's
    run = cwd / "run"
    r = subprocess.run([str(venv / "bin/genforge"), "train", "mnist5k-dcgan", "--max-steps", "3", "--out", str(run),
                        "--eval-every", "0", "--sample-every", "0", "--checkpoint-every", "3", "--base-channels", "8",
                        "--batch-size", "16", "--no-tensorboard", "--device", "cpu", "--quiet"],
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (run / "config.yaml").is_file()
    checkpoints = list((run / "checkpoints").rglob("model.safetensors"))
    assert checkpoints, sorted(p.name for p in run.rglob("*"))
    r = subprocess.run([str(venv / "bin/genforge"), "recipes"], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=120)
    assert r.returncode == 0 and "mnist5k-dcgan" in r.stdout
