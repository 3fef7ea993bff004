"""Multi-process training under torchrun: PyTorch DistributedDataParallel (DDP) in a few helpers.

``torchrun --nproc_per_node=N -m genforge train CONFIG`` starts N copies of the
same ``genforge train``; torchrun tells each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
:func:`setup` reads it and joins the process group (gloo on the CPU, nccl on
CUDA with each process on ``cuda:LOCAL_RANK``). The loop (``loop.py``) then
asks the returned :class:`Context` for what differs from a one-process run:

- ``wrap``: each trained network in DDP, so every backward pass averages the
  gradients over all processes before the optimizer steps. The GAN's two
  networks are wrapped separately and keep their own optimizers. The loop
  keeps the unwrapped modules for the EMA and for checkpoints, so saved
  weights have no ``module.`` prefix and load at any world size.
- ``shard``: the distributed sampler. The loop draws each step's *global*
  batch (``batch_size`` images per process, times the world size) as a fixed
  function of the step; process ``rank`` keeps every world-size-th image of
  it, starting at ``rank`` (as ``torch.utils.data.DistributedSampler`` does).
  The shards are disjoint, their union is the global batch, and a GAN's
  ``d_steps`` chunks of it stay the chunks a one-process run would see.
- ``is_main``: only rank 0 writes (metrics, TensorBoard, grids, checkpoints,
  validation scores); the others wait at a barrier after each checkpoint and
  all load the same checkpoint on resume (the run directory must be on a file
  system every node sees).
- ``mean``, ``any``: the logged losses are averaged over the processes (the
  global batch's loss), and every stop decision (a signal, ``max_seconds``, a
  non-finite loss) is taken by all processes at the same step.

Choices, and why:

- BatchNorm: DDP's buffer sync (``forward_sync_buffers``, formerly
  ``broadcast_buffers``). Before each forward rank 0's running statistics are
  copied to every process, so the saved ones are consistent; batch statistics
  in training are those of each process's own ``batch_size`` images, as in a
  one-process run at that batch size. SyncBatchNorm (statistics over the global batch)
  is not offered: PyTorch implements it for CUDA only, it cannot be tested on
  the CPU, and rank 0's BatchNorm recalibration of the EMA generator (alone,
  in train mode) would wait forever for the other processes.
- ``find_unused_parameters`` stays off: every parameter of a wrapped network
  gets its gradient in every backward pass that reaches it (DDP fails only
  when some of a network's gradients arrive and others do not). The G step
  runs D forward with D's parameters frozen: none of D's gradient hooks fire,
  D has nothing to average, and G's gradients are averaged in that backward
  pass. G runs in the D step too, on fakes that are detached: no G gradient
  there. The fused real+fake D pass is one forward; DCGAN's separate passes
  (BatchNorm in D) are two forwards before one backward, which DDP allows.
  Checked by ``tests/test_distributed.py`` for each GAN variant.
- EMA: updated on every process, identically (the weights are identical);
  one lerp per step, and ``release_nets`` stays valid on any process.
- Random numbers: the initial weights are rank 0's (DDP broadcasts them when
  wrapping). Latents, reparameterization and augmentation noise come from a
  stream per process (:meth:`Context.seed`), rank 0's being a one-process
  run's; a checkpoint keeps every process's stream, so resuming with the same
  world size continues exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from genforge.errors import ConfigError, GenforgeError, TrainingError

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class _DDP(DistributedDataParallel):
    """DDP that still answers for its network's own attributes (``D.mbstd``, ``denoiser.num_classes``), so the
    trainers in ``models/`` run unchanged on a wrapped network."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("module")
            if inner is None:
                raise
            return getattr(inner, name)


@dataclass
class Context:
    """Where this process stands in a run: rank 0 of 1 for a plain ``genforge train``."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    owns_group: bool = False            # setup() joined the group, so close() leaves it
    control: object = None              # a gloo group for small CPU-side agreements (nccl runs)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cpu_threads(self) -> int:
        """Intra-op threads per process: the cores shared out among this node's processes (0: all, as before)."""
        if self.local_world_size == 1:
            return 0
        return max(1, len(os.sched_getaffinity(0)) // self.local_world_size)

    def seed(self, base: int) -> int:
        """The seed of this process's own random stream; rank 0 gets ``base``, as a one-process run does."""
        return base + 1_000_003 * self.rank

    def wrap(self, nets: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """Each network with trainable parameters in DDP (a diffusion schedule has none); unchanged alone."""
        if not self.active:
            return nets
        ids = [self.device] if self.device.type == "cuda" else None
        return {role: _DDP(net, device_ids=ids, forward_sync_buffers=True)
                if any(p.requires_grad for p in net.parameters()) else net for role, net in nets.items()}

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's images of a step's global batch ``idx`` (n,): every world_size-th, from ``rank``."""
        if idx.shape[0] % self.world_size:
            raise AssertionError(f"global batch of {idx.shape[0]} does not split over {self.world_size} processes")
        return idx[self.rank::self.world_size]

    def any(self, flag) -> bool:
        """True on every process when ``flag`` is true on any (a signal, the clock): all stop at the same step."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([float(bool(flag))])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def mean(self, losses: dict[str, torch.Tensor], finite: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Losses averaged over the processes (each a mean over an equal shard: the global batch's mean), and
        whether every process stayed finite. One all-reduce, at log steps only."""
        if not self.active:
            return losses, finite
        t = torch.stack([v.detach().float() for v in losses.values()] + [(~finite).float()])
        dist.all_reduce(t)
        means = {k: v / self.world_size for k, v in zip(losses, t[:-1])}
        return means, t[-1] == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.control)

    def gather(self, obj) -> list:
        """``obj`` from every process, in rank order (small CPU objects: random generator states)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def check_in_sync(self, nets: dict[str, nn.Module], step: int) -> None:
        """Refuse to go on when the processes' copies of a network differ: their gradients were not averaged.

        DDP never sends weights after wrapping; it relies on every process applying the same averaged
        gradients. Two sums per network, compared exactly: identical weights give identical sums.
        """
        if not self.active:
            return
        roles = [r for r, net in nets.items() if any(True for _ in net.parameters())]
        sums = torch.stack([torch.stack([torch.stack([p.detach().double().sum() for p in nets[r].parameters()]).sum(),
                                         torch.stack([p.detach().double().square().sum()
                                                      for p in nets[r].parameters()]).sum()]) for r in roles])
        sums = sums.to(self.device)
        high, low = sums.clone(), sums.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        apart = [r for r, h, lo in zip(roles, high, low) if not torch.equal(h, lo)]
        if apart:
            raise TrainingError(f"after step {step} the {self.world_size} processes hold different "
                                f"{', '.join(apart)} weights: their gradients were not averaged. No checkpoint "
                                f"was written for this step")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> Context:
    """Join torchrun's process group when there is one (or use one the caller joined); else rank 0 of 1.

    ``device`` is what the config asked for: under torchrun "cuda" becomes this process's ``cuda:LOCAL_RANK``.
    """
    joined = dist.is_available() and dist.is_initialized()
    if not joined and not launched_by_torchrun():
        return Context(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda":
        if device.index is not None and local_world > 1:
            raise ConfigError(f"device {str(device)!r}: under torchrun each process takes the GPU cuda:LOCAL_RANK; "
                              "set device=cuda")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not joined:
        missing = [k for k in TORCHRUN_ENV if k not in os.environ]
        if missing:
            raise GenforgeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {', '.join(missing)} is not: "
                                "start multi-process training with torchrun --nproc_per_node=N -m genforge train ...")
        if not dist.is_available():
            raise GenforgeError("this PyTorch build has no torch.distributed: multi-process training needs it")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        owns = True
    ctx = Context(device=device, rank=dist.get_rank(), world_size=dist.get_world_size(),
                  local_world_size=local_world, owns_group=owns)
    if dist.get_backend() != "gloo":  # stop flags and barriers travel on the CPU: no device sync per step
        ctx.control = dist.new_group(backend="gloo")
    return ctx
