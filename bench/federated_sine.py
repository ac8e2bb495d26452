"""Novel-party nRMSE of every iterative federated algorithm on sine, in one process (no Ray).

    python -m bench.federated_sine                          # 60 training / 20 novel parties, a sine run's [federated]
    python -m bench.federated_sine --algorithms ditto pfedhn --rounds 20
    python -m bench.federated_sine --algorithms per_fedavg --set per_fedavg.alpha=0.001

Each algorithm runs :func:`fusion.federated.rounds.run_rounds` on the training parties' private data, with the
``[federated]`` keys a sine run resolves (the scenario's defaults, ``--rounds`` and ``--set`` over them); a novel
party then takes ``algorithm.novel(...)``'s 0-shot model, or fine-tunes it on k shots by the run's recipe
(``FinetuneConfig()``) under the algorithm's ``constraint_for``. ``cold_start`` (a party's own random init,
fine-tuned) is the reference. Prints one table: nRMSE mean ± std (median) over the novel parties (nRMSE is RMSE /
amplitude: a few small-amplitude parties can dominate the mean), and the costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from cluster.config import resolve
from fusion.adapt import FREE, FinetuneConfig, finetune
from fusion.federated import ALGORITHMS
from fusion.federated.rounds import Parties, run_rounds
from fusion.models.params import forward
from scenarios import Stream, build, make_options, party_descriptors, party_torch_generator, training_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algorithms", nargs="+", default=sorted(ALGORITHMS))
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--novel", type=int, default=20)
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 10])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=None, help="default: a sine run's (the scenario's defaults)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME.KEY=VALUE", help="an algorithm setting (JSON value)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    sc = build("sine-domains", make_options("sine-domains", {}))
    spec, seed = sc.spec, args.seed
    ids = np.arange(args.train, dtype=np.int64)
    desc, x, y = training_data(sc, seed, ids)
    real = sc.real_rows(y).sum(axis=1)
    parties = Parties(
        ids, torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(desc), torch.as_tensor(real, dtype=torch.float32),
        lambda d: lambda pred, t: sc.loss(pred, t, d),
    )  # fmt: skip
    init = sc.init_params(torch.Generator().manual_seed(seed)).numpy()

    novel = np.arange(args.train, args.train + args.novel, dtype=np.int64)
    n_desc = party_descriptors(sc, seed, novel)
    d_t = torch.as_tensor(n_desc)
    ev = [sc.party_eval_data(seed, i, d) for i, d in zip(novel, n_desc)]
    ex, ey = (torch.as_tensor(np.stack([e[j] for e in ev])) for j in (0, 1))
    k_max = max(args.shots)
    shot_sets = [sc.party_shot_data(seed, i, d, k_max) for i, d in zip(novel, n_desc)]
    ft_cfg, probe = sc.shot_recipe(FinetuneConfig())  # the run's "auto" recipe

    def score(warm: torch.Tensor, constraint, tune: bool) -> dict[int, np.ndarray]:
        out = {}
        for k in args.shots:
            tuned = warm
            if k > 0 and tune:
                sx = torch.as_tensor(np.stack([s[0][:k] for s in shot_sets]))
                sy = torch.as_tensor(np.stack([s[1][:k] for s in shot_sets]))
                tuned = finetune(warm, spec, sx, sy, sc.loss, d_t, ft_cfg, constraint, probe)
            with torch.no_grad():
                out[k] = sc.metric(forward(tuned, spec, ex), ey, d_t).numpy()
        return out

    settings: dict[str, dict] = {}
    for item in args.set:
        key, value = item.split("=", 1)
        name, field = key.split(".", 1)
        settings.setdefault(name, {})[field] = json.loads(value)
    table = {**settings, **({} if args.rounds is None else {"rounds": args.rounds})}
    cfg = resolve({"scenario": "sine-domains", "methods": list(args.algorithms), "federated": table}).federated
    rows = []
    cold = torch.stack([sc.init_params(party_torch_generator(seed, i, Stream.COLD_START)) for i in novel])
    rows.append(("cold_start", score(cold, FREE, True), None, 0.0))
    runs: dict[str, tuple] = {}  # training key -> (result, seconds): fedavg_ft reuses fedavg's rounds
    for name in args.algorithms:
        algo = ALGORITHMS[name](cfg, cfg.settings_of(name))
        if algo.training_key() not in runs:
            start_t = time.perf_counter()
            runs[algo.training_key()] = (run_rounds(algo, spec, parties, init, seed), time.perf_counter() - start_t)
        result, seconds = runs[algo.training_key()]
        start = algo.novel(result.server, spec)
        warm = torch.as_tensor(start.predict(n_desc))
        values = score(warm, start.constraint_for(warm), start.finetune)
        if not start.zero_shot and 0 in values:  # no 0-shot model (FedRep's untrained head): n/a
            values[0] = np.full_like(values[0], np.nan)
        rows.append((name, values, result.costs, seconds))
        print(f"  {name}: {seconds:.0f}s", file=sys.stderr, flush=True)

    shots_head = " | ".join(f"nRMSE {k}-shot" for k in args.shots)
    print(f"| method | {shots_head} | upload MB | download MB | party steps | rounds time (s) |")
    print("|---" * (5 + len(args.shots)) + "|")
    for name, values, costs, seconds in rows:
        cells = " | ".join(
            "n/a" if np.isnan(v).all() else f"{v.mean():.3f} ± {v.std():.3f} ({np.median(v):.3f})"
            for v in values.values()
        )
        if costs is None:
            print(f"| {name} | {cells} | – | – | – | – |")
            continue
        up, down = costs.upload_bytes / 1e6, costs.download_bytes / 1e6
        print(f"| {name} | {cells} | {up:.2f} | {down:.2f} | {costs.party_steps} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
