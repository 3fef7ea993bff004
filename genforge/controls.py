"""Sampling controls, declared once: name, type, range, default and help.

Each model family lists the controls it takes (``gan.CONTROLS``, ``vae.CONTROLS``, ``diffusion.CONTROLS``)
and each modality the output controls it takes (``genforge.modalities``). Everything else is derived from
these declarations: the checks in :func:`genforge.generation.sample`, the ``genforge sample`` flags, the
HTTP request schema, ``/v1/models`` and the web page's inputs, the recipe fields that set a model's own
defaults (``recipe_field``), and the checks of those fields when a model file is loaded.

This module imports nothing from genforge but the error type, so the config layer and ``--help`` can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from genforge.errors import GenforgeError


@dataclass(frozen=True)
class Control:
    name: str
    type: type                      # int, float or str
    help: str
    low: float | None = None        # range for numbers: low <= value <= high (low excluded if low_open)
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()   # for strings: the allowed values
    default: object = None          # what applies when neither the caller nor the recipe gives a value
    recipe_field: str | None = None  # the training-config field that sets the model's own default
    conditional_only: bool = False  # only class-conditional models take it (guidance)
    stage: str = "decode"           # "noise": shapes the latents before decoding; "decode": goes to the
                                    # family's generate(); "output": applied to the finished samples
    multiple: bool = False          # strings: a list of values is taken (stop strings); one value is a list of one
    min_chars: int = 0              # strings without choices: their length bounds
    max_chars: int = 0              # (0: no upper bound)

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type is str:
            if self.min_chars and self.max_chars:
                return f"text of {self.min_chars} to {self.max_chars} characters"
            return f"text of at most {self.max_chars} characters" if self.max_chars else "text"
        if self.type is int:
            return f"an integer from {self.low:g} to {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def check(self, value, where: str = ""):
        """``value`` coerced to the control's type, or a GenforgeError naming the control and the value."""
        label = f"{where}{self.name}"
        if self.multiple:  # a list of strings (one string is a list of one); each checked as below
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, (list, tuple)):
                raise GenforgeError(f"{label} must be a list of {self.range_text()}, got {value!r}")
            one = replace(self, multiple=False)
            checked = []
            for v in values:
                if not isinstance(v, str):
                    raise GenforgeError(f"{label} must be a list of {self.range_text()}, got an item {v!r}"[:300])
                checked.append(one.check(v, where))
            return tuple(checked)
        if self.type is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise GenforgeError(f"{label} must be {self.range_text()}, got {value!r}"[:300])
            if len(value) < self.min_chars or (self.max_chars and len(value) > self.max_chars):
                shown = repr(value) if len(value) <= 40 else f"{len(value)} characters"
                raise GenforgeError(f"{label} must be {self.range_text()}, got {shown}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GenforgeError(f"{label} must be {self.range_text()}, got {value!r}")
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        if isinstance(value, float) and not math.isfinite(value):
            raise GenforgeError(f"{label} must be {self.range_text()}, got {shown}")
        if self.type is int:
            if isinstance(value, float) and not value.is_integer():
                raise GenforgeError(f"{label} must be {self.range_text()}, got {shown}")
            value = int(value)
        # an int compares exactly with the float bounds, however large: no conversion that could overflow
        low_ok = value > self.low if self.low_open else value >= self.low
        if not (low_ok and value <= self.high):
            raise GenforgeError(f"{label} must be {self.range_text()}, got {shown}")
        return value if self.type is int else float(value)

    def describe(self) -> dict:
        """The declaration as JSON (``/v1/models``, the web page)."""
        out = {"name": self.name, "type": self.type.__name__, "help": self.help, "default": self.default}
        if self.choices:
            out["choices"] = list(self.choices)
        elif self.type is str:
            out.update({"min_chars": self.min_chars, "max_chars": self.max_chars or None, "multiple": self.multiple})
            if self.multiple:
                out["default"] = list(self.default or ())
        else:
            out.update({"min": self.low, "max": self.high, "min_exclusive": self.low_open})
        return out


SAMPLERS = ("ddim", "dpm++2m", "dpm++2m-sde")  # implemented in genforge/models/diffusion.py

# --- family controls ----------------------------------------------------------------------------------------
TRUNCATION = Control("truncation", float, "keep this central share of each latent coordinate (1: all)",
                     low=0.0, high=1.0, low_open=True, default=1.0, stage="noise")
TEMPERATURE = Control("temperature", float, "below 1: cleaner, less varied (VAEs: the spread of the prior; text: the "
                      "logits are divided by it)",
                      low=0.0, high=10.0, low_open=True, default=1.0, stage="noise")
STEPS = Control("steps", int, "sampler steps (1000: the full chain)", low=1, high=1000, default=50,
                recipe_field="sample_steps")
SAMPLER = Control("sampler", str, "ddim, dpm++2m (DPM-Solver++, better at 10 to 20 steps) or dpm++2m-sde "
                  "(its stochastic form: fresh noise each step, which corrects an undertrained network's errors)",
                  choices=SAMPLERS, default="ddim", recipe_field="sampler")
GUIDANCE = Control("guidance", float, "classifier-free guidance scale (1: plain conditional, 0: unconditional)",
                   low=0.0, high=20.0, default=1.0, recipe_field="guidance", conditional_only=True)

# --- output controls of the image modality --------------------------------------------------------------------
MAX_SIZE = 2048
RESAMPLE_FILTERS = ("nearest", "bilinear", "lanczos")
SIZE = Control("size", int, "resize the output images to SIZE x SIZE", low=1, high=MAX_SIZE, stage="output")
RESAMPLE = Control("resample", str, "filter for --size: nearest, bilinear or lanczos", choices=RESAMPLE_FILTERS,
                   default="lanczos", stage="output")

# --- text families (models/lm.py, models/sentence_vae.py); temperature above is theirs too -----------------
MAX_NEW_TOKENS_LIMIT = 2048     # the most tokens one request may ask for (the server may lower it)
MAX_PROMPT_CHARS = 100_000
LONG_PROMPT_POLICIES = ("truncate", "refuse")
PROMPT = Control("prompt", str, "the text the model continues", default="", max_chars=MAX_PROMPT_CHARS)
MAX_NEW_TOKENS = Control("max_new_tokens", int, "tokens to generate after the prompt", low=1,
                         high=MAX_NEW_TOKENS_LIMIT, default=256)
TOP_K = Control("top_k", int, "sample among the K most likely tokens (0: all)", low=0, high=1_000_000, default=0)
TOP_P = Control("top_p", float, "nucleus sampling: the fewest tokens that hold this share of the probability "
                "(1: all)", low=0.0, high=1.0, low_open=True, default=1.0)
REPETITION_PENALTY = Control("repetition_penalty", float, "divide the positive logits of tokens already in the "
                             "text by this, multiply the negative ones (Keskar et al. 2019; 1: off)", low=1.0,
                             high=10.0, default=1.0)
STOP = Control("stop", str, "stop when the generated text contains this string (give it again for several)",
               default=(), multiple=True, min_chars=1, max_chars=1000)
LONG_PROMPT = Control("long_prompt", str, "a prompt longer than the context: keep its last tokens (truncate, "
                      "noted in the result) or refuse", choices=LONG_PROMPT_POLICIES, default="truncate")

# every control declared above, in the order ``genforge sample --help`` lists them (the family controls, then the
# output controls); torch-free, so the CLI builds its flags from it without importing a family module
ALL = (TRUNCATION, TEMPERATURE, STEPS, SAMPLER, GUIDANCE, PROMPT, MAX_NEW_TOKENS, TOP_K, TOP_P, REPETITION_PENALTY,
       STOP, LONG_PROMPT, SIZE, RESAMPLE)


def resolve(model, given: dict, families: dict[str, tuple[Control, ...]]) -> dict:
    """The controls of a call checked against ``model.controls``: the one check of every sampling path
    (``genforge.generation.sample`` and the text plan, so the CLI, the Python API and the HTTP service).

    None values, and empty lists of a control that takes several (``stop``), are dropped; each other value is
    checked and coerced by its declaration. A control the model does not take is an error naming the family it
    belongs to: ``families`` maps each family to the controls it declares, in the registry's order (built by
    the caller from ``genforge.models.MODELS``, which this module cannot import), and the first that declares
    the control names it."""
    takes = {c.name: c for c in model.controls}
    out = {}
    for name, value in given.items():
        control = takes.get(name)
        if value is None or (control is not None and control.multiple and isinstance(value, (list, tuple))
                             and not value):
            continue
        if control is None:
            if any(c.name == name and c.conditional_only for c in model.method.CONTROLS):
                raise GenforgeError(f"{name} needs a class-conditional model; {model.name} is unconditional")
            owner = next((f for f, declared in families.items() if any(c.name == name for c in declared)), None)
            if owner:
                article = "an" if owner[0] in "aeiou" else "a"
                raise GenforgeError(f"{name} is {article} {owner.upper() if len(owner) == 3 else owner} control; "
                                    f"model {model.name} is a {model.family} (its controls: {', '.join(takes)})")
            raise GenforgeError(f"unknown control {name!r}; model {model.name} takes {', '.join(takes)}")
        out[name] = control.check(value)
    return out
