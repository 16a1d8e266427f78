"""What a training step costs, counted instead of timed, so that the doctor's plan (how many
clips, steps and epochs each probe runs) is the same on an idle machine and on a busy one.

A step's cost is its floating-point operations: PyTorch's `FlopCounterMode` counts the
matrix products and convolutions of one forward and backward pass; recurrent layers, which it
does not count (their CPU kernels are fused), are added from their sizes, and grouped
(depthwise) convolutions, far slower per operation, count GROUPED_COST times. Nominal seconds are
those operations at NOMINAL_FLOPS plus a fixed per-step overhead: the rate of the reference
machine, a 2-core CPU. Measured there (min of 5 steps; process CPU time over 2 threads, which a
busy machine does not inflate the way it does the wall clock; the doctor's own idle demo
diagnosis agrees, 0.32 s a demo step): the demo's test_resnet CNN-LSTM (batch 16, 8 frames)
12.8 GFLOP in 0.39 s at 64 px (33 GFLOP/s), 3.5 GFLOP in 0.13 s at 32 px (27); a 2-conv user
CNN-LSTM 0.58 GFLOP in 0.025 s (23); a bidirectional LSTM head on cached features 0.50 GFLOP
in 0.013 s (39). Within a factor of 2 on that machine, then; elsewhere a faster machine simply
finishes a diagnosis sooner, a slower or busier one later, and both reach the same verdicts.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

NOMINAL_FLOPS = 30e9  # operations per second of the reference 2-core CPU (see above)
STEP_OVERHEAD_S = 0.004  # optimiser, autograd and Python per step (an MLP head's step: 11 ms)
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


GROUPED_COST = 50.0  # a grouped (depthwise) convolution's operation costs about this many
# dense ones on a CPU: memory-bound, little reuse. Measured (64 frames at 128 px, 2 threads,
# beside other jobs): resnet10t / resnet18 ran 23-32 GFLOP/s, tf_efficientnet_lite0 4.2 GFLOP/s
# with 9 % of its 16 GFLOP in depthwise convolutions, which puts them at ~1/60 of the dense rate


def _counted_flops(model: nn.Module, run: Callable[[], None]) -> tuple[float, float, float]:
    """(counted, recurrent, grouped) operations of `run`: FlopCounterMode's count; the
    recurrent layers' products from their sizes (forward 2·B·T·gates·H·(I+H) per direction and
    layer, backward twice that), which it does not count (their CPU kernels are fused); and
    the forward operations of grouped convolutions, which it counts at the dense rate."""
    from torch.utils.flop_counter import FlopCounterMode

    seen: list[float] = []
    grouped: list[float] = []

    def hook(m: nn.RNNBase, inputs: tuple, output: object) -> None:
        x = inputs[0]
        if hasattr(x, "batch_sizes"):  # packed: the sum of the batch sizes is B·T
            bt = float(x.batch_sizes.sum())
        else:
            bt = float(x.shape[0] * x.shape[1]) if x.dim() == 3 else float(x.shape[0])
        g, h = GATES.get(m.mode, 1), m.hidden_size
        dirs = 2 if m.bidirectional else 1
        size = m.input_size
        total = 0.0
        for _ in range(m.num_layers):
            total += 2 * bt * g * h * (size + h) * dirs
            size = h * dirs
        seen.append(3 * total)  # forward + backward

    def conv_hook(m: nn.Conv2d, inputs: tuple, output: Tensor) -> None:
        if m.groups > 1:
            k = m.kernel_size[0] * m.kernel_size[1]
            grouped.append(2.0 * output.numel() * (m.in_channels // m.groups) * k)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.RNNBase)]
    handles += [m.register_forward_hook(conv_hook) for m in model.modules()
                if isinstance(m, nn.Conv2d)]
    try:
        with FlopCounterMode(display=False) as counter:
            run()
    finally:
        for h in handles:
            h.remove()
    return float(counter.get_total_flops()), float(sum(seen)), float(sum(grouped))


def step_flops(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
               loss_fn: Callable, forward: Callable[[nn.Module, Tensor], Tensor]) -> float:
    """Operations of one training step of `model` on (x, y) (forward, backward, the step), in
    dense-equivalent operations (grouped convolutions at GROUPED_COST each)."""
    def run() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(forward(model, x), y).backward()
        opt.step()

    counted, recurrent, grouped = _counted_flops(model, run)
    return counted + recurrent + 3 * (GROUPED_COST - 1) * grouped  # forward + backward


def nominal_seconds(flops: float, steps: int = 1) -> float:
    """Seconds of `steps` steps of `flops` operations on the reference machine."""
    return steps * (STEP_OVERHEAD_S + flops / NOMINAL_FLOPS)


def forward_flops(model: nn.Module, run: Callable[[], object]) -> float:
    """Operations of `run` (a forward pass through `model`, no backward), dense-equivalent."""
    counted, recurrent, grouped = _counted_flops(model, lambda: run())
    return counted + recurrent / 3 + (GROUPED_COST - 1) * grouped  # recurrent: forward only


def nominal_forward_s(flops: float) -> float:
    """Seconds of a forward pass of `flops` operations on the reference machine."""
    return STEP_OVERHEAD_S / 4 + flops / NOMINAL_FLOPS


# Loading one augmented clip through the data pipeline (frame cache, crop, flip, colour,
# normalise) on the reference machine: 0.3-0.6 s for 26 clips of 8 frames at 32 px measured
# beside the short run's steps on a busy machine, about 1.5 ms a frame, so about 1 ms idle; in
# proportion to pixels.
LOAD_FRAME_S = 0.001
LOAD_FRAME_PIXELS = 32 * 32


def load_s(clip_shape: list[int] | tuple[int, ...]) -> float:
    """Seconds to load one augmented clip of `clip_shape` (T, C, H, W), or per-frame features
    (T, D), on the reference machine."""
    if len(clip_shape) < 4:
        return 0.0  # cached features are not reloaded
    frames, pixels = clip_shape[0], clip_shape[-1] * clip_shape[-2]
    return frames * LOAD_FRAME_S * max(1.0, pixels / LOAD_FRAME_PIXELS)
