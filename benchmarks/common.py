"""What every benchmark shares: how it trains a recipe for a budget, and how it writes its RESULTS.md section.

Imports nothing heavy (no torch), so a benchmark can use it before it decides what else to load.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

OPEN_STEPS = 100_000_000  # a step cap no budget reaches: the wall clock ends the run


def train_settings(seconds: float | None = None, steps: int | None = None, *, evaluate: bool = False,
                   recipe_steps: bool = False, log_every: int | None = None) -> list[str]:
    """The ``--set`` settings with which a benchmark trains a recipe: for ``seconds`` of wall clock (0: no limit;
    None: the recipe's own ``max_seconds``), up to ``steps`` steps (None: no cap below the budget, or the
    recipe's own ``max_steps`` when ``recipe_steps``); no sample grids, TensorBoard or mid-run checkpoints (the
    last checkpoint is still written); no mid-run validation unless ``evaluate`` (the recipe's own
    ``eval_every``). One list for ``load_config`` overrides; :func:`as_flags` makes them ``genforge train``
    flags."""
    sets = ["sample_every=0", "tensorboard=false", "checkpoint_every=0"]
    if seconds is not None:
        sets.append(f"max_seconds={seconds:g}")
    if steps is not None or not recipe_steps:
        sets.append(f"max_steps={OPEN_STEPS if steps is None else steps}")
    if not evaluate:
        sets.append("eval_every=0")
    if log_every:
        sets.append(f"log_every={log_every}")
    return sets


def as_flags(sets: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` as ``genforge train`` arguments: ``["--set", "a=1", "--set", "b=2"]``."""
    return [arg for s in sets for arg in ("--set", s)]


def section_marks(name: str, default: str) -> tuple[tuple[str, str], str]:
    """RESULTS.md section ``name``'s start and end markers, and the suffix its heading gets (": NAME") when it
    is not the benchmark's ``default`` section: one section per kind of machine keeps each one's rows."""
    return (f"<!-- {name}:start -->", f"<!-- {name}:end -->"), ("" if name == default else f": {name}")


def write_section(path: Path, section: str, marks: tuple[str, str] | None = None) -> None:
    """Replace one benchmark's section of RESULTS.md, keeping the others.

    The section's first and last lines are its markers (``<!-- name:start -->`` ... ``<!-- name:end -->``),
    unless ``marks`` names them.
    """
    lines = section.strip("\n").splitlines()
    start, end = marks or (lines[0], lines[-1])
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.strip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section.strip("\n") + "\n"
    from genforge.io import atomic_write_text

    atomic_write_text(path, text)


def command_line(script: str, argv: list[str] | None = None) -> str:
    """How a benchmark was run, for its RESULTS.md section: ``python benchmarks/SCRIPT`` and its arguments
    (``sys.argv[1:]`` unless given), quoted so the line can be pasted into a shell."""
    args = sys.argv[1:] if argv is None else argv
    return f"python benchmarks/{script}" + (" " + shlex.join(args) if args else "")
