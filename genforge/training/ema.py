"""Exponential moving average of network weights, and BatchNorm recalibration for the averaged copy."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Shadow copies of some networks whose weights trail the trained ones.

    The decay ramps up as min(decay, (1 + t) / (10 + t)) over the t steps since ``start`` (the schedule of
    TensorFlow's ExponentialMovingAverage): a short run is not dominated by its random initialisation.
    ``decay=0`` turns averaging off (the shadow is then a plain copy).
    """

    def __init__(self, nets: dict[str, nn.Module], decay: float, start: int = 0):
        self.decay, self.start = decay, start
        self.shadow = {role: copy.deepcopy(net).eval().requires_grad_(False) for role, net in nets.items()}

    @torch.no_grad()
    def update(self, nets: dict[str, nn.Module], step: int) -> None:
        """Fold in the weights after ``step`` optimizer steps (step counts from 1)."""
        t = step - self.start
        decay = 0.0 if t <= 0 else min(self.decay, (1 + t) / (10 + t))
        for role, ema_net in self.shadow.items():
            net = nets[role]
            ema_p = list(ema_net.parameters())
            torch._foreach_lerp_(ema_p, [p.detach() for p in net.parameters()], 1.0 - decay)
        self.copy_buffers(nets)

    @torch.no_grad()
    def copy_buffers(self, nets: dict[str, nn.Module]) -> None:
        """The trained networks' buffers into the shadows: copied, not averaged (BatchNorm running statistics;
        what a trainer binds from the whole training split, e.g. a table model's category frequencies)."""
        for role, ema_net in self.shadow.items():
            for b_ema, b in zip(ema_net.buffers(), nets[role].buffers()):
                b_ema.copy_(b)

    def state_dict(self) -> dict:
        return {role: net.state_dict() for role, net in self.shadow.items()}

    def load_state_dict(self, state: dict) -> None:
        for role, net in self.shadow.items():
            net.load_state_dict(state[role])


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, inputs: list[tuple]) -> None:
    """Recompute BatchNorm running statistics of ``net`` on ``inputs`` (a list of argument tuples).

    The averaged weights of an EMA generator never produced the running statistics copied from the trained
    one; a few forward passes in train mode with a cumulative average (momentum=None) make them agree.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    for args in inputs:
        net(*args)
    net.eval()
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
