"""Choosing a class by name or index (genforge.generation.sampling.resolve_class / class_indices).

The case that went wrong (issue 18, items 4 and 5): a folder: source with classes "0" to "10" sorts them
"0", "1", "10", "2", ..., so "2" is both the name of class 3 and the index of class "10", and any digit
string used to be read as an index. Unicode digits ("²", "①") crashed int() with a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from genforge.errors import GenforgeError
from genforge.generation.sampling import class_indices, resolve_class

ROOT = Path(__file__).parent.parent
NUMBERED = sorted(str(i) for i in range(11))  # "0", "1", "10", "2", ..., "9": how folder: sorts them


def stand_in(class_names: list[str] | None, num_classes: int | None = None) -> SimpleNamespace:
    """The attributes resolve_class and class_indices read from a loaded model."""
    k = len(class_names) if num_classes is None else num_classes
    return SimpleNamespace(num_classes=k, class_names=class_names, cluster_prior=None, name="stand-in")


def refused(model, c) -> str:
    with pytest.raises(GenforgeError) as err:
        resolve_class(model, c)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_numbered_folder_names_win_and_ambiguity_names_both_readings():
    m = stand_in(NUMBERED)
    assert NUMBERED[:4] == ["0", "1", "10", "2"]
    message = refused(m, "2")  # the name of class 3, the index of class "10"
    assert "'2' is ambiguous" in message and "name of class 3" in message and "index of class '10'" in message
    assert "name:2" in message and "index:2" in message
    assert resolve_class(m, 2) == 2  # an int is an index: class "10"
    assert NUMBERED[resolve_class(m, "name:2")] == "2"
    assert NUMBERED[resolve_class(m, "index:2")] == "10"
    assert resolve_class(m, "0") == 0 and resolve_class(m, "1") == 1  # both readings agree
    assert "ambiguous" in refused(m, "10")  # name of class 2, index of class "9"
    assert resolve_class(m, "name:10") == 2 and resolve_class(m, "index:10") == 10
    # Through class_indices, as the CLI and the server call it: a list is cycled over the samples.
    assert class_indices(m, ["name:2", 2, "index:0"], 5).tolist() == [3, 2, 0, 3, 2]
    with pytest.raises(GenforgeError, match="ambiguous"):
        class_indices(m, "2", 4)


def test_digit_strings_are_indices_only_when_no_class_has_that_name():
    letters = stand_in(["cat", "dog", "fox"])
    assert resolve_class(letters, "1") == 1 and resolve_class(letters, "dog") == 1
    assert "out of range: this model has classes 0 to 2" in refused(letters, "3")
    digits = stand_in([str(d) for d in range(10)])  # mnist: name and index agree
    assert [resolve_class(digits, str(d)) for d in range(10)] == list(range(10))
    shifted = stand_in(["5", "7"])  # "5" names class 0; as an index it would be out of range: the name wins
    assert resolve_class(shifted, "5") == 0 and resolve_class(shifted, "1") == 1
    unnamed = stand_in(None, num_classes=4)
    assert resolve_class(unnamed, "3") == 3 and resolve_class(unnamed, 3) == 3
    assert "indices 0 to 3" in refused(unnamed, "cat")


@pytest.mark.parametrize("c", ["²", "①", "٣", "१", "2²", "index:²", "index:①",
                               pytest.param("1" * 5000, id="5000-digits")])  # int() refuses over 4300 digits
def test_unicode_and_oversized_digits_are_a_clear_error(c):
    for names in (NUMBERED, None):
        message = refused(stand_in(names, 11), c)
        assert "is not one of this model's classes" in message


def test_names_with_spaces_and_prefixes_are_exact():
    m = stand_in(["T-shirt/top", "Ankle boot", "name:odd", "2 3"])
    assert resolve_class(m, "Ankle boot") == 1 and resolve_class(m, "name:Ankle boot") == 1
    assert resolve_class(m, "name:odd") == 2  # an exact name is read before the name: prefix
    assert resolve_class(m, "2 3") == 3
    assert "'ankle boot' is not one of this model's classes: T-shirt/top, Ankle boot" in refused(m, "ankle boot")
    assert "not one of" in refused(m, "name:Sandal")
    assert "not one of" in refused(m, "index:two")


@pytest.mark.parametrize("c", [11, -1, 10**30, np.int64(11), "index:11", "-1"])
def test_out_of_range_indices(c):
    assert "out of range: this model has classes 0 to 10" in refused(stand_in(NUMBERED), c)


@pytest.mark.parametrize("c", [True, False, np.bool_(True), 2.0, None, b"2", [2]])
def test_bools_floats_and_other_types_are_refused(c):
    assert "must be a class index or name" in refused(stand_in(NUMBERED), c)


def test_integer_types_are_indices():
    m = stand_in(NUMBERED)
    assert resolve_class(m, np.int64(2)) == 2 and resolve_class(m, np.uint8(10)) == 10


def test_unconditional_model_refuses_any_class():
    m = stand_in(None, num_classes=0)
    assert class_indices(m, None, 3) is None
    with pytest.raises(GenforgeError, match="unconditional"):
        class_indices(m, "0", 3)
    with pytest.raises(GenforgeError, match="at least one class"):
        class_indices(stand_in(NUMBERED), [], 3)


def genforge_cli(*args):
    return subprocess.run([sys.executable, "-m", "genforge", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_cli_on_a_model_trained_on_numbered_class_folders(tmp_path, tiny_config):
    """End to end: classes "0".."10" from folder:, a conditional model, and `genforge sample --class`."""
    from PIL import Image

    from genforge.training import train

    rng = np.random.default_rng(0)
    for name in NUMBERED:
        for i in range(3):
            (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    run = tmp_path / "run"
    train(tiny_config("cdcgan", data=f"folder:{tmp_path / 'data'}", max_steps=1, checkpoint_every=1,
                      val_fraction=0.0, test_fraction=0.0), run, quiet=True)

    for bad, message in (("²", "class '²' is not one of this model's classes: 0, 1, 10, 2"),
                         ("2", "class '2' is ambiguous: it is the name of class 3 and the index of class '10'")):
        r = genforge_cli("sample", run, "--n", 2, "--class", bad, "--out", tmp_path / "x.npz")
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("genforge: error: ") and message in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x.npz").exists()

    r = genforge_cli("sample", run, "--n", 4, "--class", "name:2,index:2", "--out", tmp_path / "ok.npz")
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as f:
        assert f["y"].tolist() == [3, 2, 3, 2]  # the folder named "2", then the folder "10"
