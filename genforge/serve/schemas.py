"""Request and response bodies of the HTTP API (pydantic). Unknown fields are refused, types are strict
(``"n": "4"`` is an error, not 4), and NaN or infinite numbers are refused."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from genforge.controls import Control
from genforge.modalities import MODALITIES
from genforge.models import MODELS

MIN_TRUNCATION = 0.01  # below this, truncation by resampling redraws for a long time: a cheap way to busy a server
MAX_LATENT = 1000.0    # |z| bound for latents sent back in a feedback round (N(0, 1) values lie within 10)
# Bounds the server adds to a control's declared range, to keep a request cheap; /v1/models reports them.
SERVER_BOUNDS = {"truncation": {"min": MIN_TRUNCATION, "min_exclusive": False}}

ClassSpec = Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1, max_length=100)]
Format = Literal["base64", "png", "npz"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def declared_controls() -> tuple[Control, ...]:
    """Every control a served model may take, once each: each family's (genforge.models), then each
    modality's output controls. Which of them a given model takes is ``model.controls``; the generation
    plan refuses the others with a message naming whose they are."""
    seen: dict[str, Control] = {}
    for spec in MODELS.values():
        for c in spec.method.CONTROLS:
            seen.setdefault(c.name, c)
    for modality in MODALITIES.values():
        for c in modality.output_controls:
            seen.setdefault(c.name, c)
    return tuple(seen.values())


CONTROLS = declared_controls()


def served_range(c: Control) -> dict:
    """A control's declaration as JSON with the server's own bounds applied (``/v1/models``, the page)."""
    return {**c.describe(), **SERVER_BOUNDS.get(c.name, {})}


def control_field(c: Control) -> tuple:
    """(annotation, Field) of a request field for control ``c``: its type and range from the declaration,
    plus the server's bounds; omitted (None) means the model's own default."""
    d = served_range(c)
    text = f"{c.help}; {c.range_text()}" + (f" (this server: at least {d['min']:g})" if c.name in SERVER_BOUNDS
                                             else "")
    if c.choices:
        return Literal[c.choices] | None, Field(None, description=text)
    low = {"gt": d["min"]} if d["min_exclusive"] else {"ge": d["min"]}
    return c.type | None, Field(None, **low, le=d["max"], description=text)


GenerateRequest = create_model(
    "GenerateRequest", __base__=Strict,
    __doc__="What to generate. Same seed and controls, same pixels as ``genforge sample`` and "
            "``model.sample`` (genforge.generation.sample).",
    model=(str, Field(min_length=1, max_length=200, description="a name from GET /v1/models")),
    n=(int, Field(1, ge=1, description="number of images (at most the server's --max-n, else 413)")),
    seed=(int | None, Field(None, ge=0, lt=2**63, description="random seed; omitted: the server picks one, and "
                                                               "returns it")),
    class_=(ClassSpec | Annotated[list[ClassSpec], Field(min_length=1, max_length=1000)] | None, Field(
        None, alias="class",
        description="conditional models: a class index (JSON integer) or name (string), or a list cycled over "
                    "the images; a string is a name first, an index only when it names no class; omitted: "
                    "every class in turn")),
    **{c.name: control_field(c) for c in CONTROLS},
    format=(Format, Field("base64", description="base64: JSON with one PNG per image (series models: the "
                                                "values); png: one grid PNG (series: a plot); npz: arrays x "
                                                "(uint8 images, float32 series), y (classes), z (latents)")),
    latents=(bool, Field(True, description="base64 format: return each image's latent, for feedback rounds")),
)


class Liked(Strict):
    z: list[Annotated[float, Field(ge=-MAX_LATENT, le=MAX_LATENT)]] = Field(
        min_length=1, max_length=65536, description="the latent of a liked image, as a response returned it")
    class_: Annotated[int, Field(ge=0)] | None = Field(None, alias="class", description="its class "
                                                                                         "(conditional models)")


class FeedbackRequest(Strict):
    """More like these: new latents near the liked ones, sqrt(1 - r^2) z_liked + r eps with eps from seed."""

    model: str = Field(min_length=1, max_length=200)
    liked: list[Liked] = Field(min_length=1, max_length=256, description="the liked images' latents and classes")
    n: int = Field(8, ge=1, description="number of new images; liked images are used in turn")
    radius: float = Field(0.3, ge=0, le=1, description="0 repeats the liked images, 1 ignores them")
    seed: int | None = Field(None, ge=0, lt=2**63)
    format: Format = "base64"
    latents: bool = True


class GenerateResponse(BaseModel):
    """The base64 format. png and npz carry the seed in the X-Genforge-Seed header (npz also as array seed)."""

    model: str
    seed: int
    n: int
    controls: dict
    images: list[str] | None = Field(None, description="image models: base64 PNGs, each with genforge's "
                                                       "provenance metadata (audio models: each clip's "
                                                       "spectrogram)")
    series: list[list[list[float]]] | None = Field(None, description="series models: (n, channels, time) values "
                                                                     "in the data's units")
    channel_names: list[str] | None = Field(None, description="series models: the name of each channel")
    audio: list[str] | None = Field(None, description="audio models: base64 16-bit WAVs, provenance in their INFO "
                                                      "chunk")
    rate: int | None = Field(None, description="audio models: the WAVs' sample rate (Hz)")
    classes: list[int] | None
    latents: list[list[float]] | None
    pixels_sha256: list[str] | None = Field(None, description="image models: SHA-256 of each image's pixels, as "
                                                              "in the audit log")
    values_sha256: list[str] | None = Field(None, description="series models: SHA-256 of each sample's values, "
                                                              "as in the audit log")


class ModelInfo(BaseModel):
    name: str
    recipe: str
    family: str
    backend: str
    num_classes: int
    classes: list[str] | None
    modality: str = Field(description="image or series (genforge.modalities)")
    example_shape: list[int] = Field(description="one example's shape: images [channels, height, width], series "
                                                 "[channels, time]")
    image_shape: list[int] | None = Field(description="image models: [channels, height, width]")
    image_size: int | None
    z_dim: int
    weights_sha256: str | None
    step: int | None
    controls: list[str] = Field(description="the names of the controls this model takes")
    control_specs: list[dict] = Field(description="the same controls as declared (genforge.controls): name, type, "
                                                  "help, this model's default, and min/max or choices")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class KeyCreate(Strict):
    role: Literal["viewer", "generator", "admin"]
    name: str = Field("", max_length=100)


class ErrorDetail(BaseModel):
    status: int
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
