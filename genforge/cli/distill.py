"""``genforge distill``: a few-step sampler for a trained diffusion model (genforge/models/distill.py)."""

from __future__ import annotations

import click

from genforge.cli.options import CONTEXT, device_option, key_file_option, model_argument, out_option, seed_option


@click.command(context_settings=CONTEXT)
@model_argument
@click.option("--steps", type=int, default=4, show_default=True, help="sampler steps of the distilled model")
@click.option("--teacher-steps", type=int, default=None,
              help="the teacher's DDIM steps: --steps times a power of two (default: --steps doubled up to the "
                   "model's own sample_steps)")
@click.option("--iterations", type=int, default=2000, show_default=True, help="training steps per halving round")
@click.option("--batch-size", type=int, default=64, show_default=True, help="training examples per iteration")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Adam learning rate of the student")
@click.option("--data", default=None, metavar="SPEC",
              help="data spec to distil on (default: the model's own training data)")
@seed_option()
@device_option()
@out_option("model directory to write the distilled model into")
@key_file_option
def distill(model: str, steps: int, teacher_steps: int | None, iterations: int, batch_size: int, lr: float,
            data: str | None, seed: int, device: str, out: str) -> int:
    """Distil a diffusion model into one that samples in a few steps (progressive distillation, Salimans and
    Ho 2022): each round trains a student whose one DDIM step matches two of the teacher's, halving the steps
    until --steps. Writes a normal model directory whose recipe samples in --steps steps by default."""
    import sys

    from genforge.models.distill import distill as run

    run(model, out, steps=steps, teacher_steps=teacher_steps, iterations=iterations, batch_size=batch_size, lr=lr,
        seed=seed, data=data, device=device, log=lambda line: print(line, file=sys.stderr))
    return 0
