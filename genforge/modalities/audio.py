"""Audio: mono clips at a stated sample rate, written as WAV (with provenance), npz or a spectrogram grid.

Sources (genforge.data.audio): audio:spoken-digits (made by `genforge data make spoken-digits` with
espeak-ng), audio:drums (Debian's hydrogen-drumkits), audio:asterisk-digits (the real-data check) and
audio:DIR (a user's WAV/FLAC folder). A model sees a clip as a log-mel spectrogram (1, mels, frames), which
the 2-D families learn like an image and Griffin-Lim turns back into sound, or as a raw waveform (1, samples)
for the 1-D networks; either way a written sample is float32 samples in [-1, 1].
"""

from genforge.modalities.modality import Modality

AUDIO = Modality(
    name="audio",
    sources=("audio",),
    example_axes=("c", "h", "w"),  # (1, mels, frames) for spectrogram models; waveform models: ("c", "t")
    output_dtype="float32",
    value_range=(-1.0, 1.0),
    output_controls=(),
    writers=(".wav", "", ".npz", ".png"),
    evaluator="a shipped, hashed log-mel CNN per data set (IS, Frechet distance, precision/recall, class match) "
              "with the real-data rows: the synthetic test split and the real Asterisk digits",
    recipes=("digits-", "drums-"),
)
