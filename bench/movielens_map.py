"""MovieLens: how well the map from descriptors to user models, learned on the seen users, carries to unseen users.

No Ray, no pretraining: the seen users' models are their exact ridge fits (what pretraining converges to), so
this isolates the meta-model. On the synthetic ml-100k-format data of ``--seed`` (the same data as
``python -m bench.paper_movielens --synthetic --seed``), RMSE on the unseen users' held-out ratings (mean over
users) of

- the unseen user's ``embedding`` descriptor used as its model (its own fit on its known context ratings);
- the parameter-space GP meta-model (``[fusion.gp]`` defaults) fitted to the seen users' fits, at the descriptor;
- a least-squares linear map from descriptor to fit;
- both again with the seen users' descriptors built from a random ``1 - eval_fraction`` of their ratings, as an
  unseen user's are (the seen users' fits still use all their ratings);
- in-sample against out-of-sample item embeddings: a factorization of half the seen users (A) gives every
  embedding; the linear map learned on A (whose ratings fitted the embeddings, as every seen user's do in the
  run) against the map learned on the other half B (out-of-sample, as the unseen users are), with the descriptor
  used as the model under the same embeddings beside them.

    python -m bench.movielens_map --seed 31
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from bench.report import publish
from fusion.metamodels.gp import GPMetaModel
from fusion.metamodels.gp_config import GPConfig
from scenarios.matrix_factorization import fit_als
from scenarios.movielens import DESCRIPTORS, MovieLensOptions, MovieLensScenario, model_rmse, own_fit
from scenarios.movielens_synthetic import write_synthetic_ml100k

OUT = Path(__file__).resolve().parent / "out"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="the synthetic folder's and the run's seed")
    p.add_argument("--dim", type=int, default=20)
    p.add_argument("--parties", type=int, default=800)
    p.add_argument("--test-parties", type=int, default=143)
    args = p.parse_args(argv)
    folder = write_synthetic_ml100k(OUT / f"synthetic-ml-100k-s{args.seed}", seed=args.seed)
    opt = MovieLensOptions(data_dir=str(folder), dim=args.dim)
    sc = MovieLensScenario(opt)
    sc.prepare(args.seed, args.parties, args.test_parties)
    w, data = sc.world, sc.data
    seen, test = range(args.parties), range(args.parties, args.parties + args.test_parties)

    def rmse(mf, models: np.ndarray) -> float:
        return float(np.mean([model_rmse(mf, data, w.held_out[q], z) for z, q in zip(models, test)]))

    def context_fit(mf, q: int) -> np.ndarray:  # the embedding descriptor under the factorization mf
        return DESCRIPTORS["embedding"](dataclasses.replace(w, mf=mf), data, w.known[q], opt)

    ones = lambda d: np.c_[d, np.ones(len(d))]  # noqa: E731
    fits = np.stack([own_fit(w.mf, data, w.known[q], opt.reg) for q in seen])
    test_desc = np.stack([sc.party_descriptor(args.seed, q) for q in test])
    rng = np.random.default_rng([args.seed, 0x6D6170])
    keep = lambda r: np.sort(rng.permutation(r)[max(1, round(opt.eval_fraction * len(r))) :])  # noqa: E731
    descriptors = {
        "all their ratings": np.stack([sc.party_descriptor(args.seed, q) for q in seen]),
        f"a random {1 - opt.eval_fraction:.0%} of their ratings": np.stack(
            [DESCRIPTORS["embedding"](w, data, keep(w.known[q]), opt) for q in seen]
        ),
    }
    rows = {"descriptor used as the model": rmse(w.mf, test_desc)}
    for what, desc in descriptors.items():
        meta = GPMetaModel.fit(fits, desc, GPConfig(), seed=args.seed)
        rows[f"parameter GP, seen descriptors from {what}"] = rmse(w.mf, meta.predict(test_desc))
        coef = np.linalg.lstsq(ones(desc), fits, rcond=None)[0]
        rows[f"least-squares linear map, seen descriptors from {what}"] = rmse(w.mf, ones(test_desc) @ coef)
    half = args.parties // 2
    rows_a = np.concatenate([w.known[q] for q in range(half)])
    mf_a = fit_als(
        data.user[rows_a], data.item[rows_a], data.rating[rows_a], data.n_users, data.n_items,
        opt.dim, opt.reg, opt.als_iters, args.seed,
    )  # fmt: skip
    test_a = np.stack([context_fit(mf_a, q) for q in test])
    rows["half-A embeddings: descriptor used as the model"] = rmse(mf_a, test_a)
    for label, part in (("A (in-sample)", range(half)), ("B (out-of-sample)", range(half, args.parties))):
        desc = np.stack([context_fit(mf_a, q) for q in part])
        coef = np.linalg.lstsq(
            ones(desc), np.stack([own_fit(mf_a, data, w.known[q], opt.reg) for q in part]), rcond=None
        )[0]
        rows[f"half-A embeddings: least-squares linear map learned on {label}"] = rmse(mf_a, ones(test_a) @ coef)
    known = np.concatenate([w.known[q] for q in test])
    outside = float(1 - np.isin(data.item[known], w.context).mean())
    title = f"MovieLens (synthetic, seed {args.seed}, dim {args.dim}): descriptor-to-model maps, RMSE of unseen users"
    text = "\n".join(
        [
            f"### {title}",
            "",
            "| warm start | RMSE |",
            "|---|---|",
            *(f"| {k} | {v:.4f} |" for k, v in rows.items()),
            "",
            f"Unseen users' known ratings outside the {opt.context_items} context items: {outside:.1%} (pooled).",
            "",
        ]
    )
    publish(
        text,
        OUT / f"movielens_map_s{args.seed}.md",
        {"bench": "movielens_map", "args": vars(args), "rmse": rows, "outside_context": outside},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
