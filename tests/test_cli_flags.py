"""The click command line: help without torch, flags derived from the config and the controls, one meaning per
flag name, renamed flags, suggestions, --print-config / --dry-run, --device and genforge.devices."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from genforge import controls, devices
from genforge.cli import cli, main
from genforge.config import Config
from genforge.errors import GenforgeError

ROOT = Path(__file__).parent.parent
NETWORK_COMMANDS = ["train", "sample", "eval", "memorization", "interpolate", "evaluator train", "inspect fit",
                    "inspect score", "repair", "transfer", "augment", "serve"]


def commands(group=cli, path=()):
    """Every leaf command as (path, command)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from commands(command, path + (name,))
        else:
            yield path + (name,), command


def command(path: str) -> click.Command:
    return dict(commands())[tuple(path.split())]


def visible_options(cmd: click.Command) -> dict[str, click.Option]:
    return {opt: p for p in cmd.params if isinstance(p, click.Option) and not p.hidden
            for opt in p.opts + p.secondary_opts}


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["sample", "--help"]])
def test_help_imports_neither_torch_nor_numpy(args, tmp_path):
    code = ("import sys\nfrom genforge.cli import main\nstatus = main(sys.argv[1:])\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules)\n"
            "print('HEAVY', heavy)\nsys.exit(status)")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
    assert "Usage: genforge" in r.stdout


def test_top_level_help_lists_every_command_by_its_summary(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "recipes", "sample", "eval", "evaluator", "inspect", "serve", "security", "augment"):
        assert f"\n  {name} " in out
    assert "Train a model from a recipe" in out and "Score a model or an npz of samples" in out


def test_every_config_field_is_a_train_flag_with_its_comment(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the help wraps lines
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        assert flag in out, flag
    assert "--no-tensorboard" in out and "--dedup / --no-dedup" in out
    # the help is the field's comment in genforge/config.py
    assert "WGAN-GP gradient penalty weight (Gulrajani et al. 2017)" in out
    assert ("k-means clusters of the training images stand in for classes, drawn by size when sampling "
            "(cluster guidance); 0: use the labels") in out  # a comment continued on the next line


def test_sample_flags_come_from_the_control_declarations():
    options = visible_options(command("sample"))
    for c in controls.ALL:
        opt = options[f"--{c.name.replace('_', '-')}"]
        assert opt.default is None  # the model's own default applies unless given
        assert c.help in opt.help and c.range_text() in opt.help
        if c.choices:
            assert tuple(opt.type.choices) == c.choices


def test_print_config_resolves_recipe_set_and_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "mnist5k-dcgan", "--set", "g_lr=1e-3", "--batch-size", "32", "--g-betas", "0.4,0.9",
                 "--no-tensorboard", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"] == "dcgan" and cfg["base_channels"] == 32  # from the recipe
    assert cfg["g_lr"] == 1e-3 and cfg["batch_size"] == 32 and cfg["g_betas"] == [0.4, 0.9]
    assert cfg["tensorboard"] is False and cfg["device"] == "auto"  # nothing asked for a device
    assert not (tmp_path / "runs").exists()  # nothing trained, no run directory


def test_set_takes_one_pair_and_never_the_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # --set before the recipe: the recipe stays the recipe
    assert main(["train", "--set", "batch_size=8", "mnist5k-dcgan", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["batch_size"] == 8
    assert main(["train", "--set", "batch_size=8", "g_lr=1e-3", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "one pair per use" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "mnist5k-dcgan", "--set", "batch_size", "--print-config"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_print_config_runs_the_training_checks(capsys):
    assert main(["train", "mnist5k-dcgan", "--model", "no-such-model", "--print-config"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_dry_run_loads_the_data_and_trains_nothing(tmp_path, digits_npz, capsys):
    run = tmp_path / "run"
    assert main(["train", "mnist5k-vae-mlp", "--data", digits_npz, "--out", str(run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would train vae-mlp on" in out and "train," in out and f"into {run}" in out
    assert not run.exists()
    assert main(["train", "mnist5k-vae-mlp", "--data", "npz:/nonexistent/d.npz", "--dry-run"]) == 2
    assert "/nonexistent/d.npz" in capsys.readouterr().err


@pytest.mark.parametrize("args, new", [
    (["eval", "x.npz", "--json", "r.json"], "--out FILE.json"),
    (["augment", "mnist5k-cvae-conv", "--json", "r.json"], "--out FILE.json"),
    (["interpolate", "RUN", "--seeds", "1,2", "--steps", "4", "--out", "w.gif"], "--frames"),
    (["evaluator", "train", "--data", "mnist5k", "--steps", "3"], "--train-steps"),
    (["repair", "RUN", "x.npz", "--task", "denoise", "--steps", "5", "--out", "o.png"], "--latent-steps"),
    (["repair", "RUN", "x.npz", "--task", "denoise", "--resample", "2", "--out", "o.png"], "--repaint-passes"),
    (["transfer", "RUN", "x.npz", "--to", "3", "--from", "5", "--out", "g.png"], "--source-class"),
])
def test_an_old_flag_spelling_names_the_new_one(args, new, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("genforge: error: ") and f"use {new}" in err and len(err.strip().splitlines()) == 1


def test_one_meaning_per_flag_name():
    holders: dict[str, list[str]] = {}
    for path, cmd in commands():
        for opt in visible_options(cmd):
            holders.setdefault(opt, []).append(" ".join(path))
    assert holders["--steps"] == ["sample", "distill"]  # the diffusion sampler's steps: to sample with, or to distil to
    assert holders["--from"] == ["sample"] and holders["--resample"] == ["sample"]
    assert "--json" not in holders
    for path, cmd in commands():  # every output is --out
        outs = [p for p in cmd.params if isinstance(p, click.Option) and p.help and "write" in p.help.lower()
                and p.name not in ("out", "encrypt", "keep", "audit_fsync", "tensorboard", "no_heatmaps")]
        assert not outs, (path, [p.name for p in outs])


def test_every_network_command_takes_device_auto():
    for path in NETWORK_COMMANDS:
        opt = visible_options(command(path)).get("--device")
        assert opt is not None, path
        if path != "train":  # train's --device is the config field: unset, the recipe's or auto (see above)
            assert opt.default == "auto", path


def test_prefix_abbreviations_are_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "mnist5k-dcgan", "--max-st", "3", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genforge: error: No such option '--max-st'") and "--max-steps" in err
    assert not (tmp_path / "runs").exists()


def test_a_mistyped_command_gets_a_suggestion(capsys):
    assert main(["trian", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genforge: error: no command 'trian' in 'genforge' (did you mean train")
    assert main(["evaluator", "lst"]) == 2
    err = capsys.readouterr().err
    assert "no command 'lst' in 'genforge evaluator' (did you mean list?)" in err


def test_a_bad_device_name_is_one_line(capsys):
    assert main(["sample", "RUN", "--out", "x.png", "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "genforge: error: device 'gpu': use auto, cpu, cuda, cuda:N or mps"


def test_eval_takes_the_device_and_names_a_missing_one(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["eval", "x.npz", "--device", "cuda"]) == 2  # passed through to genforge.devices.pick
    assert "no CUDA device is available here" in capsys.readouterr().err


def test_ctrl_c_exits_130(monkeypatch, capsys):
    import genforge.generation.provenance as provenance

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(provenance, "verify", interrupted)
    assert main(["verify", "x.png"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_recipes_lists_every_bundled_recipe(capsys):
    from genforge.recipes import names, path_of

    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from genforge.apps import APP_MODELS

    assert [line.split()[0] for line in lines] == names() + list(APP_MODELS)  # the application models last
    assert "application model" in lines[-1] and "genforge repair" in lines[-2]
    row = next(line for line in lines if line.startswith("mnist5k-dcgan "))
    assert "gan (dcgan)" in row and "mnist5k" in row and "Best at: a first run" in row
    cddpm = next(line for line in lines if line.startswith("fashion-cddpm "))
    assert "diffusion (cddpm)" in cddpm and "fashion-mnist" in cddpm
    for name in names():  # each file opens with a comment saying what the recipe is best at
        assert path_of(name).read_text().startswith("# Best at: "), name


def test_devices_pick():
    import torch

    assert devices.pick("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert devices.pick("auto").type == expected
    assert devices.check_name(" CUDA:1 ") == "cuda:1"
    for bad in ("gpu", "cuda:", "cuda:x", "tpu", ""):
        with pytest.raises(GenforgeError, match="use auto, cpu, cuda, cuda:N or mps"):
            devices.check_name(bad)
    if not torch.cuda.is_available():
        with pytest.raises(GenforgeError, match="no CUDA device is available here"):
            devices.pick("cuda:0")


def test_load_takes_device_auto(tmp_path):
    import genforge

    fixture = next(p.parent for p in sorted((ROOT / "tests/fixtures").rglob("config.json"))
                   if (p.parent / "model.safetensors").exists())
    model = genforge.load(fixture, device="auto")
    assert model.device == devices.pick("auto")
    assert model.sample(2, seed=0).x.shape[0] == 2
