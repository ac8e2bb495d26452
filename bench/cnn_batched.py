"""Batched versus per-model CNN training: ``P`` cnn-s parties, ``steps`` full-batch Adam steps on ``n`` images each.

Three ways to train the same ``P`` models on the same data (28x28 random images, random labels of 10 classes):

- ``batched``: ``fusion.adapt.training.train`` on the (P, n_params) stack: grouped convolutions (``groups=P``) and
  batched matrix products, one tensor program for all parties (what party shards run);
- ``loop (ours)``: the same ``train`` called once per party (P = 1);
- ``loop (torch)``: a ``torch.nn.Sequential`` and ``torch.optim.Adam`` per party, one after the other.

Prints wall seconds, CPU seconds of this process (the steadier figure on a shared machine), party-steps per
second and the ratios to batched for each, and the largest difference between the batched and the
torch-loop parameters (float rounding, scaled up by Adam on near-zero gradients).

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


if __name__ == "__main__":
    main()
