"""Writing text samples: ``.txt`` (the texts, each under a header line) and ``.jsonl`` (one JSON object per
sample with its prompt, tokens, finish reason and the settings that made it), both atomic; and the picture of
text samples the training loop writes as ``samples/step_N.png`` and to TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from genforge.io import atomic_write_text


def _record(samples, model, meta: dict, i: int) -> dict:
    s = samples.samples[i]
    return {"index": i, "text": s.text, "prompt": s.prompt, "finish_reason": s.finish_reason, "tokens": s.tokens,
            "seed": samples.seed, "controls": samples.controls, "model": model.name,
            "weights_sha256": model.meta.get("weights_sha256"), "step": model.meta.get("step"),
            **({"notes": samples.notes} if samples.notes and i == 0 else {})}


def write_txt(samples, path: Path, model, meta: dict, extra: dict, keyring, scale: int) -> Path:
    """The texts, each under ``--- sample I (seed S) ---``; the prompt is printed before each continuation."""
    parts = [f"--- sample {i} (seed {samples.seed}, {s.finish_reason}) ---\n{s.prompt}{s.text}\n"
             for i, s in enumerate(samples.samples)]
    return atomic_write_text(path, "\n".join(parts))


def write_jsonl(samples, path: Path, model, meta: dict, extra: dict, keyring, scale: int) -> Path:
    lines = [json.dumps(_record(samples, model, meta, i), ensure_ascii=False) for i in range(len(samples.samples))]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def text_card(texts: list[str], width: int = 96, lines_per_text: int = 8, title: str = "") -> np.ndarray:
    """Texts drawn as a uint8 grayscale picture (black on white, the default bitmap font), each cut to
    ``lines_per_text`` lines of ``width`` characters: what a text model's training grid shows."""
    font = ImageFont.load_default()
    rows = [title] if title else []
    for i, t in enumerate(texts):
        wrapped = []
        for line in t.splitlines() or [""]:
            wrapped += [line[k:k + width] for k in range(0, max(len(line), 1), width)]
        rows += [f"[{i}]"] + wrapped[:lines_per_text] + [""]
    ascent, descent = font.getmetrics()
    step = ascent + descent + 2
    image = Image.new("L", (8 + 7 * width, 8 + step * max(len(rows), 1)), color=255)
    draw = ImageDraw.Draw(image)
    for k, row in enumerate(rows):
        draw.text((4, 4 + k * step), row.encode("latin-1", "replace").decode("latin-1"), fill=0, font=font)
    return np.asarray(image)
