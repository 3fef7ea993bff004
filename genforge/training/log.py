"""Where training numbers go: ``metrics.jsonl``, TensorBoard event files and a progress bar."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from genforge.io import atomic_write_text

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


class RunLogger:
    """``enabled=False`` (every process but rank 0 under torchrun) writes and prints nothing."""

    def __init__(self, run: Path, total_steps: int, start_step: int, tensorboard: bool, quiet: bool,
                 enabled: bool = True):
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
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=quiet or not self.tty)
        self.last_step = start_step
        self.last_print = 0.0

    def log(self, step: int, values: dict[str, float], final: bool = False) -> None:
        if self.metrics is None:
            return
        self.metrics.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items() if k != "time"}
        if self.bar.disable:
            # Without a terminal (CI, nohup, a pipe) print a plain line at most every PRINT_SECONDS.
            if not self.quiet and (time.monotonic() - self.last_print >= PRINT_SECONDS or final):
                self.last_print = time.monotonic()
                print(f"step {step}: " + " ".join(f"{k}={v}" for k, v in shown.items()), file=sys.stderr)
        else:
            self.bar.set_postfix(shown, refresh=False)
        self.advance(step)

    def advance(self, step: int) -> None:
        if not self.bar.disable:
            self.bar.update(step - self.last_step)
        self.last_step = step

    def image(self, tag: str, grid, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")

    def message(self, text: str) -> None:
        if not self.quiet:
            (self.bar.write if not self.bar.disable else lambda t: print(t, file=sys.stderr))(text)

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()
