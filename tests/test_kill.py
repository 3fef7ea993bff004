"""kill -9 at random (seeded) moments of a tiny run that writes a checkpoint every step: each time the run
resumes from an intact checkpoint, and the final weights equal those of a run that was never interrupted
(issue 18: "a crash at any moment leaves the previous checkpoint intact", checked the way SQLite checks it)."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from genforge.training import train
from genforge.training.checkpoint import last_checkpoint, load_state

# train() directly rather than the CLI: what is tested is the loop and the checkpoint writer
SCRIPT = ("import sys; from genforge.config import load_config; from genforge.training import train; "
          "train(load_config(sys.argv[1]), sys.argv[2], resume=sys.argv[3] == '1', quiet=True)")
STEPS = 60


def _step(run: Path) -> int:
    try:
        return json.loads((run / "checkpoints" / "last.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path, tiny_config):
    cfg = tiny_config("vae-mlp", max_steps=STEPS, checkpoint_every=1, log_every=1, keep_checkpoints=2)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps(cfg.to_dict()))  # JSON is YAML
    reference = train(cfg, tmp_path / "reference", quiet=True)

    run, rng, kills = tmp_path / "killed", random.Random(18), []
    for _ in range(3):
        start = _step(run)
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(recipe), str(run), "1" if start else "0"],
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        while _step(run) < start + 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)  # until the run is checkpointing steady, every step
        time.sleep(rng.uniform(0.0, 0.15))  # then a random moment: mid-step, mid-write, between files
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(_step(run))
        proc.communicate(timeout=30)
    assert len(kills) >= 2 and all(0 < k < STEPS for k in kills), kills  # the kills landed mid-run

    done = subprocess.run([sys.executable, "-c", SCRIPT, str(recipe), str(run), "1"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _step(run) == STEPS
    a, b = load_state(reference.checkpoint), load_state(last_checkpoint(run))
    for role in a["nets"]:
        for key, tensor in a["nets"][role].items():
            assert torch.equal(tensor, b["nets"][role][key]), (role, key)
    wa, wb = load_file(reference.checkpoint / "model.safetensors"), load_file(last_checkpoint(run) / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # debris swept
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # no torn or repeated line
