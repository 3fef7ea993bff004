"""Audio: mono clips at a stated sample rate, written as WAV (with provenance), npz or a spectrogram grid.

Sources (genforge.data.audio): audio:spoken-digits (made by `genforge data make spoken-digits` with
espeak-ng), audio:drums (Debian's hydrogen-drumkits), audio:asterisk-digits (the real-data check) and
audio:DIR (a user's WAV/FLAC folder). Two modalities read them, told apart by the spec's prefix because a
modality has one example shape:

- ``audio``: a clip as a log-mel spectrogram (1, mels, mels) that the 2-D families (dcgan, cdcgan, ddpm,
  cddpm: SpecGAN's idea) learn like an image; Griffin-Lim turns a sample back into sound.
- ``audio-wave``: the raw waveform (1, samples) for the 1-D networks (WaveGAN's idea): audio-wave:NAME|DIR.

Either way a written sample is float32 samples in [-1, 1] at the model's rate.
"""

from genforge.modalities.modality import Modality

_WRITERS = (".wav", "", ".npz", ".png")
_EVALUATOR = ("a hashed log-mel CNN per data set (IS, Frechet distance, precision/recall, class match) with the "
              "real-data rows: the test split and, for digits, the real Asterisk digits")

AUDIO = Modality(
    name="audio",
    sources=("audio",),
    example_axes=("c", "h", "w"),   # (1, mels, frames): a log-mel picture
    output_dtype="float32",
    value_range=(-1.0, 1.0),
    output_controls=(),
    writers=_WRITERS,
    evaluator=_EVALUATOR,
    recipes=("digits-", "drums-"),
    cluster_view="level-free",      # what is said, not how loud: k-means on raw pictures follows the loudness
)

AUDIO_WAVE = Modality(
    name="audio-wave",
    sources=("audio-wave",),
    example_axes=("c", "t"),        # (1, samples)
    output_dtype="float32",
    value_range=(-1.0, 1.0),
    output_controls=(),
    writers=_WRITERS,
    evaluator=_EVALUATOR,
    recipes=("digits-wave", "drums-wave"),
)
