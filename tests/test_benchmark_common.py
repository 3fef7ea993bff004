"""benchmarks/common.py: the settings every benchmark trains a recipe with, and how a section of RESULTS.md is
replaced without touching the others."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (OPEN_STEPS, as_flags, command_line, section_marks, train_settings,  # noqa: E402
                               write_section)


def test_train_settings_lift_the_step_cap_and_turn_off_what_a_benchmark_does_not_time():
    sets = train_settings(600)
    assert sets == ["sample_every=0", "tensorboard=false", "checkpoint_every=0", "max_seconds=600",
                    f"max_steps={OPEN_STEPS}", "eval_every=0"]
    kept = train_settings(None, recipe_steps=True, evaluate=True, log_every=7)
    assert not any(s.startswith(("max_seconds=", "max_steps=", "eval_every=")) for s in kept)
    assert "log_every=7" in kept
    assert "max_steps=40" in train_settings(0, 40, recipe_steps=True)  # an explicit count wins over the recipe's
    assert as_flags(["a=1", "b=2"]) == ["--set", "a=1", "--set", "b=2"]


def test_write_section_replaces_only_its_own_section_and_appends_a_new_one(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n<!-- a:start -->\nold a\n<!-- a:end -->\n\nhand-written reading\n\n"
                    "<!-- b:start -->\nold b\n<!-- b:end -->\n")
    write_section(path, "<!-- a:start -->\nnew a\n<!-- a:end -->\n")
    text = path.read_text()
    assert "new a" in text and "old a" not in text
    assert "hand-written reading" in text and "old b" in text
    marks, suffix = section_marks("c-avx2", "c")
    assert marks == ("<!-- c-avx2:start -->", "<!-- c-avx2:end -->") and suffix == ": c-avx2"
    assert section_marks("c", "c")[1] == ""
    write_section(path, "\n".join([marks[0], "## C" + suffix, marks[1]]), marks)
    assert path.read_text().rstrip().endswith("## C: c-avx2\n<!-- c-avx2:end -->")
    assert path.read_text().count("<!-- c-avx2:start -->") == 1
    write_section(path, "\n".join([marks[0], "## C again", marks[1]]), marks)  # the second call replaces it
    assert path.read_text().count("<!-- c-avx2:start -->") == 1 and "## C again" in path.read_text()


def test_command_line_is_quoted_so_it_can_be_pasted_into_a_shell():
    assert command_line("timeseries.py", ["--tep", "tep:faults=1-21;seeds=0", "--budget", "600"]) == (
        "python benchmarks/timeseries.py --tep 'tep:faults=1-21;seeds=0' --budget 600")
    assert command_line("quality.py", []) == "python benchmarks/quality.py"
