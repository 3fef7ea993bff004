"""Applications built on the generative models: inspection (anomaly detection) and the repair, class-transfer
and augmentation tools, and the application models ``genforge train`` trains by name (``APP_MODELS``). Each is
its own module; nothing heavy is imported here."""

import dataclasses
import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class AppModel:
    """An application's own model, trained by ``genforge train NAME --out DIR`` (not the training loop: each
    trains itself for a time or step budget and writes safetensors + JSON into DIR)."""
    module: str            # genforge.apps.<module>
    trainer: str           # its function (out, max_seconds, max_steps, cfg, progress) -> model
    config: str            # its frozen config dataclass (the seed is the one field the command line sets)
    summary: str           # "best at", as the recipes' first comment line
    data: str              # what it trains on

    def train(self, out, max_seconds: float, max_steps: int, seed: int, progress: bool = True):
        module = importlib.import_module(f"genforge.apps.{self.module}")
        cfg = dataclasses.replace(getattr(module, self.config)(), seed=seed)
        return getattr(module, self.trainer)(out, max_seconds=max_seconds, max_steps=max_steps, cfg=cfg,
                                             progress=progress)


APP_MODELS: dict[str, AppModel] = {
    "speech-denoiser": AppModel(
        "enhance", "train_denoiser", "DenoiserConfig",
        "Best at: speech enhancement: a mask U-Net on the STFT, for genforge repair DIR noisy.wav --task denoise.",
        "asterisk prompts + noise"),
    "image-to-speech": AppModel(
        "image_to_speech", "train_image_to_speech", "SpeechConfig",
        "Best at: saying a handwritten digit: genforge sample DIR --from-image digit.png --out say.wav.",
        "mnist5k + spoken-digits"),
}
