"""write_weights / read_weights: the NAME.safetensors + NAME.json pair that evaluators, detectors, the denoiser and
image-to-speech share (genforge.models.files)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from genforge.errors import ModelFileError
from genforge.models.files import read_weights, weights_blob, write_weights


def test_tensors_and_numpy_arrays_round_trip_with_their_digest_and_format(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3).t(), "mean": np.arange(4, dtype=np.float64)[::-1]}  # not contiguous
    meta = write_weights(tmp_path / "x.safetensors", tmp_path / "x.json", tensors, {"format": "f", "n": 1}, "f")
    raw = (tmp_path / "x.safetensors").read_bytes()
    assert json.loads((tmp_path / "x.json").read_text()) == meta == {"format": "f", "n": 1,
                                                                     "weights_sha256": hashlib.sha256(raw).hexdigest()}
    assert weights_blob(tensors, "f") == (raw, meta["weights_sha256"])
    with safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert f.metadata() == {"format": "f"}
    expected = {"w": torch.empty(3, 2), "mean": torch.empty(4, dtype=torch.float64)}  # checked against the header
    back = read_weights(tmp_path / "x.safetensors", tmp_path / "x.json", meta, expected)
    assert torch.equal(back["w"], tensors["w"]) and np.array_equal(back["mean"].numpy(), tensors["mean"])
    assert "saved_at" in write_weights(tmp_path / "y.safetensors", tmp_path / "y.json", tensors, {}, "f", stamp=True)


def test_an_altered_missing_or_unrecorded_weights_file_is_named(tmp_path):
    weights, config = tmp_path / "x.safetensors", tmp_path / "x.json"
    meta = write_weights(weights, config, {"w": torch.ones(3)}, {}, "f")
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=rf"^evaluator {weights}: SHA-256 does not match x\.json: the file was "
                                             r"altered or truncated \(delete it\)$"):
        read_weights(weights, config, meta, what="evaluator", hint="delete it")
    with pytest.raises(ModelFileError, match=rf"^{config}: field 'weights_sha256' missing"):
        read_weights(weights, config, {})
    weights.unlink()
    with pytest.raises(ModelFileError, match=rf"^{weights}: missing$"):
        read_weights(weights, config, meta)
    with pytest.raises(ModelFileError, match=rf"^{weights}: missing$"):  # through the header check
        read_weights(weights, config, meta, {"w": torch.empty(3)})
