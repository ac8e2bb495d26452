"""Batched versus per-model CNN training: ``P`` cnn-s parties, ``steps`` full-batch Adam steps on ``n`` images each.

Three ways to train the same ``P`` models on the same data (28x28 random images, random labels of 10 classes):

- ``batched``: ``fusion.adapt.training.train`` on the (P, n_params) stack: convolutions as batched matrix products
  over the stack (im2col, :mod:`fusion.models.conv`), one tensor program for all parties (what party shards run);
- ``loop (ours)``: the same ``train`` called once per party (P = 1);
- ``loop (torch)``: a ``torch.nn.Sequential`` and ``torch.optim.Adam`` per party, one after the other.

Prints wall seconds, CPU seconds of this process (the steadier figure on a shared machine), party-steps per
second and the ratios to batched for each, and the largest difference between the batched and the
torch-loop parameters (float rounding, scaled up by Adam on near-zero gradients).

Efficiency: each method's arithmetic rate (a training step counted as 3x the forward pass's multiply-adds, 2 FLOP
each) against the machine's conv throughput, measured in the same process as the best of 5 forward + backward
passes of one large ``torch.nn.functional.conv2d`` (256 images of 32 channels, 12x12, 64 filters of 5x5: cnn-m's
second layer on a big batch).

    python -m bench.cnn_batched                       # 50 parties x 50 steps x 100 images, cnn-s
    python -m bench.cnn_batched --parties 10 --steps 5 --family cnn-m
"""

from __future__ import annotations

import argparse
import time

import torch

from fusion.adapt.train_config import TrainConfig
from fusion.adapt.training import train
from fusion.models.loss import RowLoss
from fusion.models.params import init_params, layers
from fusion.models.spec import spec_for_family
from tests.test_cnn import sequential


def per_model_ce(pred: torch.Tensor, y: torch.Tensor, _) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(pred.transpose(1, 2), y, reduction="none").mean(1)


cross_entropy = RowLoss(per_model_ce)  # per model, as party shards pass their scenario's loss


def forward_macs(spec) -> int:
    """Multiply-adds of one example's forward pass through ``spec`` (a CNNSpec)."""
    macs, chans = 0, (spec.channels, *spec.convs)
    for c_in, c_out, s_in in zip(chans[:-1], chans[1:], spec.sizes[:-1]):
        side = s_in + 2 * spec.padding - spec.kernel + 1
        macs += side * side * c_out * c_in * spec.kernel**2
    dims = (spec.flat_features, *spec.fc, spec.n_out)
    return macs + sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def conv_reference_flops() -> float:
    """FLOP/s of one large conv2d's forward and backward (best of 5) in this process."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 32, 12, 12, generator=g, requires_grad=True)
    w = torch.randn(64, 32, 5, 5, generator=g, requires_grad=True)
    flops = 3 * 2 * 256 * 64 * 8 * 8 * 32 * 25
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        out = torch.nn.functional.conv2d(x, w)
        torch.autograd.grad(out.sum(), (x, w))
        best = min(best, time.perf_counter() - start)
    return flops / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parties", type=int, default=50)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--family", default="cnn-s")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = spec_for_family(args.family, 784, 10)
    g = torch.Generator().manual_seed(0)
    p, n = args.parties, args.images
    init = torch.stack([init_params(spec, g) for _ in range(p)])
    x, y = torch.rand(p, n, 784, generator=g), torch.randint(0, 10, (p, n), generator=g)
    cfg = TrainConfig(steps=args.steps, lr=0.001, decay=False)
    rows = []

    start, cpu = time.perf_counter(), time.process_time()
    batched = train(init, spec, x, y, cross_entropy, cfg)
    rows.append(("batched", time.perf_counter() - start, time.process_time() - cpu))

    start, cpu = time.perf_counter(), time.process_time()
    for i in range(p):
        train(init[i : i + 1], spec, x[i : i + 1], y[i : i + 1], cross_entropy, cfg)
    rows.append(("loop (ours)", time.perf_counter() - start, time.process_time() - cpu))

    start, cpu = time.perf_counter(), time.process_time()
    looped = []
    for i in range(p):
        net = sequential(spec)
        net.load_state_dict(
            {
                k: t[0].clone()
                for k, t in zip(spec.state_dict_keys(), (t for w, b in layers(init[i : i + 1], spec) for t in (w, b)))
            }
        )
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        images = x[i].reshape(n, 1, 28, 28)
        for _ in range(args.steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(images), y[i]).backward()
            opt.step()
        looped.append(torch.cat([t.detach().reshape(-1) for t in net.state_dict().values()]))
    rows.append(("loop (torch)", time.perf_counter() - start, time.process_time() - cpu))
    diff = (batched - torch.stack(looped)).abs().max().item()

    print(
        f"{p} x {spec} ({spec.n_params:,} params), {args.steps} steps on {n} images, {torch.get_num_threads()} threads"
    )
    print(f"{'method':<14}{'seconds':>10}{'CPU s':>10}{'party-steps/s':>16}{'vs batched':>12}{'CPU vs batched':>16}")
    for name, sec, cpu_s in rows:
        print(
            f"{name:<14}{sec:>10.2f}{cpu_s:>10.2f}{p * args.steps / sec:>16.1f}{sec / rows[0][1]:>11.2f}x"
            f"{cpu_s / rows[0][2]:>15.2f}x"
        )
    print(f"max |batched - torch loop| over all parameters: {diff:.2e}")
    work = 3 * 2 * forward_macs(spec) * n * p * args.steps
    ref = conv_reference_flops()
    print(f"conv2d reference: {ref / 1e9:.1f} GFLOP/s")
    for name, sec, _ in rows:
        print(f"{name:<14}{work / sec / 1e9:>8.1f} GFLOP/s = {work / sec / ref:.0%} of the conv2d reference")


if __name__ == "__main__":
    main()
