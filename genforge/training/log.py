"""Where training numbers go: ``metrics.jsonl``, TensorBoard event files and a progress bar."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from genforge.io import atomic_write_text
from genforge.memory import counters_since_last_log

PRINT_SECONDS = 10.0


def trim_metrics(path: Path, start_step: int) -> None:
    """Before a (resumed) run appends: drop the torn last line a kill -9 can leave, and the lines of steps after
    ``start_step`` (logged after the checkpoint the run resumes from; they are logged again, from the same
    weights, as the run repeats those steps). Rewritten atomically; nothing to do for a new run."""
    if not path.is_file():
        return
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    keep = []
    for line in lines:
        if not line.endswith("\n"):
            break  # the torn last line
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            step = None
        if isinstance(step, int) and step > start_step:
            break
        keep.append(line)
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(keep))


def tensorboard_tag(key: str) -> str:
    """``val_fid`` -> ``val/fid``, ``loss_d`` -> ``train/loss_d``: TensorBoard groups tags by their prefix, so the
    validation scores and the training numbers (losses, throughput, epoch, privacy) land in two sections.
    metrics.jsonl keeps the flat keys (users parse them)."""
    return "val/" + key[len("val_"):] if key.startswith("val_") else "train/" + key


def remaining_seconds(step: int, start_step: int, max_steps: int, elapsed: float,
                      max_seconds: float = 0.0) -> float | None:
    """Seconds a run has left: the steps still to go at the rate so far, or, under a time budget, the smaller of
    that and the budget left (the run stops at whichever comes first). None before the first step is timed."""
    done = step - start_step
    by_steps = (max_steps - step) * elapsed / done if done > 0 and elapsed > 0 else None
    if not max_seconds:
        return by_steps
    by_time = max(0.0, max_seconds - elapsed)
    return by_time if by_steps is None else min(by_steps, by_time)


class _Bar(tqdm):
    """tqdm whose "remaining" is :func:`remaining_seconds` (``{left}`` in the bar format), not tqdm's own count
    to ``total``: under max_seconds a 30 s run must not show 29:51 left."""

    FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{left}, {rate_fmt}{postfix}]"

    def __init__(self, *args, left: Callable[[], float | None], **kwargs):
        self.left = left
        super().__init__(*args, bar_format=self.FORMAT, **kwargs)

    @property
    def format_dict(self):
        d = super().format_dict
        seconds = self.left() if hasattr(self, "left") else None
        d["left"] = "?" if seconds is None else tqdm.format_interval(seconds)
        return d


class RunLogger:
    """``enabled=False`` (every process but rank 0 under torchrun) writes and prints nothing.

    ``max_seconds``: the run's time budget (0: none), counted from when the logger is made; the bar's time left
    is then the smaller of the step estimate and the budget left. ``clock``: seconds, monotonic (tests pass a
    fake one). ``progress``: show the bar even when stderr is not a terminal (default: only on a terminal)."""

    def __init__(self, run: Path, total_steps: int, start_step: int, tensorboard: bool, quiet: bool,
                 enabled: bool = True, max_seconds: float = 0.0, clock: Callable[[], float] = time.perf_counter,
                 progress: bool | None = None):
        # line-buffered: a crash loses at most a line
        if enabled:
            trim_metrics(Path(run) / "metrics.jsonl", start_step)
        self.metrics = open(Path(run) / "metrics.jsonl", "a", buffering=1) if enabled else None
        self.writer = None
        quiet = quiet or not enabled
        if tensorboard and enabled:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when asked for

            self.writer = SummaryWriter(str(Path(run) / "tensorboard"))
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.total_steps, self.start_step, self.max_seconds = total_steps, start_step, float(max_seconds or 0)
        self.clock, self.t0 = clock, clock()
        show = self.tty if progress is None else progress
        self.last_step = start_step
        self.bar = _Bar(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=quiet or not show, left=self.remaining)
        self.last_print = 0.0

    def log(self, step: int, values: dict[str, float], final: bool = False) -> None:
        if self.metrics is None:
            return
        # page faults per second and the kernel's share of the CPU time since the last line: a run whose
        # allocator maps and unmaps memory shows it here long before its images/s collapse
        self.metrics.write(json.dumps({"step": step, **values, **counters_since_last_log()}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(tensorboard_tag(key), value, step)
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items() if k != "time"}
        if self.bar.disable:
            # Without a terminal (CI, nohup, a pipe) print a plain line at most every PRINT_SECONDS.
            if not self.quiet and (time.monotonic() - self.last_print >= PRINT_SECONDS or final):
                self.last_print = time.monotonic()
                self.last_step = step  # the time left counts this step as done
                left = self.remaining()
                print(f"step {step}: " + " ".join(f"{k}={v}" for k, v in shown.items())
                      + ("" if left is None or final else f" ({tqdm.format_interval(left)} left)"), file=sys.stderr)
        else:
            self.bar.set_postfix(shown, refresh=False)
        self.advance(step)

    def remaining(self) -> float | None:
        """Seconds this run has left (see :func:`remaining_seconds`), by the logger's clock."""
        return remaining_seconds(self.last_step, self.start_step, self.total_steps, self.clock() - self.t0,
                                 self.max_seconds)

    def advance(self, step: int) -> None:
        if not self.bar.disable:
            self.bar.update(step - self.last_step)
        self.last_step = step

    def image(self, tag: str, grid, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tensorboard_tag(tag), grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")

    def message(self, text: str) -> None:
        if not self.quiet:
            (self.bar.write if not self.bar.disable else lambda t: print(t, file=sys.stderr))(text)

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()
