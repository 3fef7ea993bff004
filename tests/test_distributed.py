"""Multi-process training (DDP) on the CPU with gloo and 2 processes.

One spawned 2-process session runs every multi-process ``train()`` of this file (starting processes is the
slow part); a torchrun run tests the command line. What is held:

- with the VAE's reparameterization noise switched off (eps = 0, so nothing random differs between the
  processes), 2 processes at batch B give the loss curve of 1 process at batch 2B to 1e-5 (relative; measured: 1e-7), and a
  2-process run resumed by 1 process continues that curve: sharding, gradient and loss averaging, resume;
- with the noise on, the curves still agree to 5% (measured: 2.8% at worst; each process draws its own noise: not the same numbers);
- every GAN variant (BatchNorm in G and D, joint and separate D passes, gradient penalty, spectral norm, ADA,
  d_steps=2, ACGAN) and diffusion keep identical weights on both processes (checked at every checkpoint),
  and the guard that checks it fails loudly when they differ.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import genforge
from genforge.errors import ConfigError, GenforgeError, TrainingError
from genforge.models import build_networks, vae
from genforge.training import distributed, train
from genforge.training.checkpoint import last_checkpoint, load_state

WORLD = 2
TIMEOUT = 120  # seconds for the whole 2-process session; a deadlock fails the test instead of hanging it


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _no_noise(mu, logvar, noise):
    """The VAE's z without its random part: a 2-process run then has nothing random that a 1-process run lacks."""
    return mu


def _worker(rank: int, store: str, jobs: list, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    result = {}
    try:
        for name, cfg, run, noiseless, resume in jobs:
            reparameterize = vae.reparameterize
            if noiseless:
                vae.reparameterize = _no_noise
            try:
                result[name] = train(cfg, run, resume=resume, quiet=True).step
            finally:
                vae.reparameterize = reparameterize
        # the guard: rank-dependent weights must be refused on every process
        ctx = distributed.setup(torch.device("cpu"))
        differs, agrees = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        with torch.no_grad():
            differs.weight.fill_(float(rank))
            agrees.weight.fill_(1.0)
            agrees.bias.fill_(2.0)
        try:
            ctx.check_in_sync({"generator": differs, "discriminator": agrees}, 7)
        except TrainingError as e:
            result["guard"] = str(e)
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


# The GAN and diffusion variants run by 2 processes: each is a different way of using D, G or the denoiser.
VARIANTS = {
    "gan-mlp": ("gan-mlp", {}),                                          # BatchNorm in G, joint real+fake D pass
    "dcgan": ("dcgan", {}),                                              # BatchNorm in G and D: separate D passes
    "wgan-gp": ("dcgan", {"gan_loss": "wgan-gp", "d_norm": "none", "d_steps": 2}),  # penalty: double backward
    "sngan-ada": ("dcgan", {"gan_loss": "hinge", "spectral_norm": True, "ada_target": 0.6, "ada_interval": 1,
                            "mbstd": True}),
    "acgan": ("acgan", {}),                                              # D's auxiliary classifier head
    "cddpm": ("cddpm", {}),                                              # denoiser.num_classes through DDP
}


@pytest.fixture(scope="module")
def session(tmp_path_factory, digits_npz):
    """Run all 2-process jobs in one spawned session; return (root, config maker, results per rank)."""
    from genforge.config import from_dict

    from conftest import TINY

    def make(model: str, **overrides):
        values = {"data": digits_npz, "model": model, "batch_size": 16, "max_steps": 4, "log_every": 1,
                  "sample_every": 0, "checkpoint_every": 4, "grid_n": 4, "tensorboard": False, "num_threads": 1,
                  **TINY[model], **overrides}
        return from_dict(values, "test")

    root = tmp_path_factory.mktemp("ddp")
    vae_cfg = dict(max_steps=8, g_lr=1e-3)
    jobs = [("vae-noiseless", make("vae-mlp", **vae_cfg), str(root / "vae2-noiseless"), True, False),
            ("vae", make("vae-mlp", **vae_cfg), str(root / "vae2"), False, False),
            # 4 steps, then resumed to 8 by the same 2 processes
            ("vae-half", make("vae-mlp", g_lr=1e-3), str(root / "vae2-resumed"), False, False),
            ("vae-resumed", make("vae-mlp", **vae_cfg), str(root / "vae2-resumed"), False, True)]
    jobs += [(name, make(model, max_steps=3, checkpoint_every=2, **extra), str(root / name), False, False)
             for name, (model, extra) in VARIANTS.items()]
    context = mp.spawn(_worker, args=(str(root / "store"), jobs, str(root)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the 2-process session did not finish in {TIMEOUT} s (a deadlock?)")
    results = [json.loads((root / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return root, make, results


def test_two_processes_match_one_process_with_twice_the_batch(session, tmp_path, monkeypatch):
    root, make, _ = session
    monkeypatch.setattr(vae, "reparameterize", _no_noise)
    one = train(make("vae-mlp", max_steps=12, g_lr=1e-3, batch_size=32), tmp_path / "one", quiet=True)
    two = _metrics(root / "vae2-noiseless")
    ref = {m["step"]: m for m in _metrics(one.run)}
    assert [m["step"] for m in two] == list(range(1, 9))  # rank 0 alone writes: one line per step
    assert ref[8]["loss"] < 0.8 * ref[1]["loss"]  # it learns: the comparison is not between two flat lines
    for m in two:
        for key in ("loss", "recon", "kl"):
            assert m[key] == pytest.approx(ref[m["step"]][key], rel=1e-5, abs=1e-5), (m["step"], key)
        # images/s counts the global batch
        assert m["images_per_sec"] > 0
    # the weights agree too, not only the losses: to a tenth of one Adam step (lr 1e-3). Adam divides by the
    # gradient's running size, so where a gradient is near 0 the all-reduce's float32 rounding moves a weight
    # by up to ~lr: torch 2.14.1 left 3.8e-5 after 8 steps. Ranks that skipped the all-reduce would each follow their
    # own half batch, about lr apart per step.
    a, b = load_state(last_checkpoint(root / "vae2-noiseless")), load_state(one.run / "checkpoints" / "step_00000008")
    for role in a["nets"]:
        for key, tensor in a["nets"][role].items():
            assert torch.allclose(tensor, b["nets"][role][key], rtol=1e-4, atol=1e-4), (role, key)
    assert a["world_size"] == 2 and a["global_batch"] == 32 and len(a["rank_rngs"]) == 2

    # resume the 2-process run with 1 process (batch 32: the same global batch): it continues the same curve
    run = tmp_path / "resumed"
    shutil.copytree(root / "vae2-noiseless", run)
    resumed = train(make("vae-mlp", max_steps=12, g_lr=1e-3, batch_size=32), run, resume=True, quiet=True)
    assert resumed.step == 12
    after = [m for m in _metrics(run) if m["step"] > 8]
    assert [m["step"] for m in after] == [9, 10, 11, 12]
    for m in after:
        assert m["loss"] == pytest.approx(ref[m["step"]]["loss"], rel=1e-5), m["step"]
    assert genforge.load(run).meta["step"] == 12


def test_two_processes_with_their_own_noise_stay_close(session, tmp_path):
    """Each process draws its own reparameterization noise, so the curves differ by sampling noise only."""
    root, make, _ = session
    one = train(make("vae-mlp", max_steps=8, g_lr=1e-3, batch_size=32), tmp_path / "one", quiet=True)
    ref = {m["step"]: m["loss"] for m in _metrics(one.run)}
    two = {m["step"]: m["loss"] for m in _metrics(root / "vae2")}
    assert two.keys() == ref.keys()
    assert all(two[s] == pytest.approx(ref[s], rel=0.05) for s in ref), (two, ref)
    assert two != ref  # the noise is really not shared


def test_two_processes_resume_exactly(session):
    """Each process's random stream is in the checkpoint: 4 steps + 4 resumed steps = 8 steps in one go."""
    root, _, results = session
    assert all(r["vae-half"] == 4 and r["vae-resumed"] == 8 for r in results)
    a, b = load_state(last_checkpoint(root / "vae2")), load_state(last_checkpoint(root / "vae2-resumed"))
    for role in a["nets"]:
        for key, tensor in a["nets"][role].items():
            assert torch.equal(tensor, b["nets"][role][key]), (role, key)
    assert [m["loss"] for m in _metrics(root / "vae2")] == [m["loss"] for m in _metrics(root / "vae2-resumed")]


@pytest.mark.parametrize("name", VARIANTS)
def test_gan_and_diffusion_variants_stay_in_sync(session, name):
    root, make, results = session
    model, extra = VARIANTS[name]
    assert all(r[name] == 3 for r in results)  # both processes finished; each checkpoint checked they agree
    state = load_state(last_checkpoint(root / name))
    assert state["step"] == 3 and not any(k.startswith("module.") for net in state["nets"].values() for k in net)
    cfg = make(model, **extra)
    torch.manual_seed(cfg.seed)
    from genforge.models import MODELS, d_options

    z_dim = MODELS[model].method.latent_dim(cfg.z_dim, (1, 28, 28))
    init = build_networks(model, (1, 28, 28), z_dim, cfg.base_channels, 10 if MODELS[model].conditional else 0,
                          d_options(cfg))
    for role, net in init.items():
        trained = state["nets"][role]
        if any(p.requires_grad for p in net.parameters()):  # every trained network moved
            assert any(not torch.equal(t, trained[k]) for k, t in net.state_dict().items()), role
    assert len(_metrics(root / name)) == 3
    model_ = genforge.load(root / name)
    assert model_.sample(2, seed=0).x.shape[0] == 2


def test_guard_refuses_processes_whose_weights_differ(session):
    _, _, results = session
    for r in results:
        assert "generator" in r["guard"] and "discriminator" not in r["guard"]
        assert "2 processes hold different" in r["guard"] and "step 7" in r["guard"]


def test_shard_is_a_distributed_sampler():
    """Disjoint shards whose union is the global batch; each of a GAN's d_steps chunks stays the same chunk."""
    for world in (1, 2, 4):
        for d_steps in (1, 2):
            idx = torch.randperm(world * 6 * d_steps)
            shards = [distributed.Context(rank=r, world_size=world).shard(idx) for r in range(world)]
            assert sorted(torch.cat(shards).tolist()) == sorted(idx.tolist())
            for k in range(d_steps):
                seen = torch.cat([s.chunk(d_steps)[k] for s in shards])
                assert sorted(seen.tolist()) == sorted(idx.chunk(d_steps)[k].tolist())
    with pytest.raises(AssertionError):
        distributed.Context(rank=0, world_size=2).shard(torch.arange(5))


def test_torchrun_resumes_a_one_process_run(session, tmp_path):
    """The command line under torchrun: resume a 1-process run with 2 processes of half the batch."""
    _, make, _ = session
    run = tmp_path / "r"
    train(make("gan-mlp", max_steps=2, batch_size=32, checkpoint_every=2), run, quiet=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "genforge", "train", "--resume", str(run), "--max-steps", "4", "--set", "batch_size=16"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes, batch_size 16 each: 32 images per step" in done.stderr
    assert done.stderr.count("genforge: training gan-mlp") == 1  # rank 0 alone speaks
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4]
    state = load_state(last_checkpoint(run))
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rank_rngs"]) == 2
    assert genforge.load(run).meta["step"] == 4


def test_torchrun_environment_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(GenforgeError, match="WORLD_SIZE=2 is set but RANK.*torchrun"):
        distributed.setup(torch.device("cpu"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="'cuda:1'.*cuda:LOCAL_RANK; set device=cuda"):
        distributed.setup(torch.device("cuda:1"))
