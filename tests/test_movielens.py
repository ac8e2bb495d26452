"""The MovieLens scenario on a synthetic ml-100k-format folder: the split, the factorization, pretraining, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cluster.cli import main
from cluster.config import resolve
from cluster.pipeline import run
from fusion.adapt.train_config import TrainConfig
from fusion.adapt.training import train
from fusion.models.params import init_params
from scenarios import build, make_options, movielens_data
from scenarios.matrix_factorization import ridge_solve
from scenarios.movielens_synthetic import write_synthetic_ml100k

SMALL = {"dim": 4, "context_items": 15, "als_iters": 5}


@pytest.fixture
def folder(tmp_path):
    return write_synthetic_ml100k(tmp_path / "ml-100k", n_users=40, n_items=60, n_ratings=1200, seed=1)


def scenario(folder, n_train=24, n_test=8, **over):
    sc = build("movielens", make_options("movielens", {"data_dir": str(folder), **SMALL, **over}))
    sc.prepare(3, n_train, n_test)
    return sc


def test_synthetic_folder_has_the_real_formats(folder):
    first = (folder / "u.data").read_text().splitlines()[0].split("\t")
    assert len(first) == 4 and 1 <= int(first[2]) <= 5
    assert (folder / "u.item").read_bytes().split(b"|")[1].decode("latin-1").startswith("Synthetic Film 1")
    assert len((folder / "u.user").read_text().splitlines()[0].split("|")) == 5
    data = movielens_data.load(str(folder))
    assert data.n_users == 40 and len(data.rating) == 1200 and min(len(r) for r in data.by_user()) >= 20


def test_parties_are_distinct_users_and_test_ratings_stay_held_out(folder):
    sc = scenario(folder)
    w = sc.world
    assert len(set(w.users.tolist())) == 32
    assert np.array_equal(w.users, scenario(folder).world.users)  # a function of the seed only
    for p in range(24, 32):
        assert len(w.held_out[p]) >= 1 and not set(w.held_out[p]) & set(w.known[p])
        assert len(w.held_out[p]) + len(w.known[p]) == len(sc.data.by_user()[w.users[p]])
    # descriptor = "ratings": the user's known ratings on the context items, 0 where unrated.
    data, p = sc.data, 27
    desc = scenario(folder, descriptor="ratings").party_descriptor(3, p)
    known = {int(i): r for i, r in zip(data.item[w.known[p]], data.rating[w.known[p]])}
    assert desc.tolist() == [known.get(int(i), 0.0) for i in w.context]
    mean_fill = scenario(folder, descriptor="ratings", missing="user_mean").party_descriptor(3, p)
    assert np.allclose(mean_fill[desc == 0], np.mean(list(known.values())))
    # "svd": those ratings, centred on the seen users' mean, on the seen users' leading singular directions.
    svd = scenario(folder, descriptor="svd")
    seen = np.stack([scenario(folder, descriptor="ratings").party_descriptor(3, q) for q in range(24)])
    _, _, vt = np.linalg.svd(seen - seen.mean(0), full_matrices=False)
    got = svd.party_descriptor(3, p)
    assert got.shape == (SMALL["dim"],)
    np.testing.assert_allclose(np.abs(got), np.abs((desc - seen.mean(0)) @ vt[: SMALL["dim"]].T), atol=1e-8)
    # "embedding" (default): the ridge user vector and bias of the rated context items over their embeddings.
    emb = sc.party_descriptor(3, p)
    on = [r for r in w.known[p] if data.item[r] in set(w.context.tolist())]
    target = data.rating[on] - w.mf.mu - w.mf.item_bias[data.item[on]]
    assert emb.shape == (SMALL["dim"] + 1,) and len(on) < len(w.known[p])
    np.testing.assert_allclose(emb, ridge_solve(w.mf.items[data.item[on]], target, sc.options.reg), atol=1e-10)
    ex, ey = sc.party_eval_data(3, p, desc)
    assert ey[:, 2].sum() == len(w.held_out[p]) and ex.shape[0] == w.pad_eval
    sx, _ = sc.party_shot_data(3, p, desc, 5)
    assert np.array_equal(sx[:3], sc.party_shot_data(3, p, desc, 3)[0])  # nested shots


def test_item_embeddings_never_see_test_users_ratings(folder, tmp_path):
    before = scenario(folder, context_items=10).world
    lines = (folder / "u.data").read_text().splitlines()
    test_user_ids = set(movielens_data.load(str(folder)).user_ids[before.users[24:]].tolist())
    changed = [
        "\t".join([u, i, str(6 - int(r)), t]) if int(u) in test_user_ids else line
        for line, (u, i, r, t) in zip(lines, (ln.split("\t") for ln in lines))
    ]
    other = tmp_path / "changed"
    other.mkdir()
    for name in ("u.item", "u.user"):
        (other / name).write_bytes((folder / name).read_bytes())
    (other / "u.data").write_text("\n".join(changed) + "\n")
    after = scenario(other, context_items=10).world
    np.testing.assert_array_equal(after.users, before.users)
    np.testing.assert_allclose(after.mf.items, before.mf.items)
    np.testing.assert_array_equal(after.context, before.context)


def test_pretraining_reaches_the_ridge_solution_of_the_users_ratings(folder):
    sc = scenario(folder, reg=0.2)
    w, ids = sc.world, [0, 5, 11]
    data = [sc.party_train_data(3, p, sc.party_descriptor(3, p)) for p in ids]
    x, y = torch.tensor(np.stack([d[0] for d in data])), torch.tensor(np.stack([d[1] for d in data]))
    desc = torch.zeros(len(ids), 15)
    init = torch.stack([init_params(sc.spec, torch.Generator().manual_seed(p)) for p in ids])
    fitted = train(init, sc.spec, x, y, lambda pred, t: sc.loss(pred, t, desc), TrainConfig(3000, 0.02)).numpy()
    for row, p in zip(fitted, ids):
        rows = w.known[p]
        items = sc.data.item[rows]
        target = sc.data.rating[rows] - w.mf.mu - w.mf.item_bias[items]
        np.testing.assert_allclose(row, ridge_solve(w.mf.items[items], target, 0.2), atol=2e-3)


def test_bad_folders_and_sizes_are_clear_errors(folder, tmp_path, capsys):
    with pytest.raises(ValueError, match="parties \\+ test_parties = 41 but .* has only 40 users"):
        scenario(folder, n_train=33, n_test=8)
    with pytest.raises(ValueError, match="no u.data, u.item, u.user there"):
        scenario(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("u.item", "u.user"):
        (broken / name).write_bytes((folder / name).read_bytes())
    (broken / "u.data").write_text("1\t2\t3\t4\n1 2 3 4\n")
    with pytest.raises(ValueError, match="u.data:2: expected user<TAB>item<TAB>rating<TAB>timestamp"):
        scenario(broken)
    with pytest.raises(ValueError, match="scenario.missing"):
        make_options("movielens", {"missing": "median"})
    with pytest.raises(ValueError, match="scenario.descriptor must be one of embedding, svd, ratings"):
        make_options("movielens", {"descriptor": "pca"})
    assert main(["run", "movielens", "--data-dir", str(folder), "--parties", "40", "--test-parties", "5"]) == 2
    err = capsys.readouterr().err
    assert "has only 40 users" in err and "Traceback" not in err


def test_movielens_end_to_end_on_ray_with_the_oracle(ray_session, folder, tmp_path):
    cfg = resolve(
        {
            "scenario": {"name": "movielens", "data_dir": str(folder), **SMALL},
            "parties": 30,
            "test_parties": 8,
            "shots": [0, 5],
            "seed": 1,
            "methods": ["fusion", "nearest_task", "average", "cold_start"],
            "pretrain": {"steps": 300, "lr": 0.03},
            "finetune": {"steps": 30},
            "fusion": {"gp": {"max_steps": 30, "inducing": 16}},
            "party_actors": 2,
            "out": str(tmp_path / "run"),
        }
    )
    res = run(cfg, log=lambda _: None)
    means = {(r["method"], r["shots"]): r["mean"] for r in res.summary}
    assert len(means) == 8 and all(0 < v < 4 for v in means.values())
    sc = build("movielens", cfg.scenario_options)
    sc.prepare(1, 30, 8)
    oracle = sc.oracle_rmse(list(range(30, 38)))
    assert oracle.shape == (8,) and oracle.mean() < means[("average", 0)]  # personalization helps on low-rank data


def test_own_fit_references_are_the_descriptor_and_the_full_fit(folder):
    """The context-only fit scores the embedding descriptor used as the model; with every item a context item
    the two fits are one."""
    sc = scenario(folder)
    w, data, mf, test = sc.world, sc.data, sc.world.mf, list(range(24, 32))
    ctx = sc.own_fit_rmse(test, context_only=True)
    for i, p in enumerate(test):
        z, held = sc.party_descriptor(3, p), w.held_out[p]
        pred = mf.mu + mf.item_bias[data.item[held]] + mf.items[data.item[held]] @ z[:-1] + z[-1]
        assert ctx[i] == pytest.approx(np.sqrt(((pred - data.rating[held]) ** 2).mean()))  # by hand, not model_rmse
    every = scenario(folder, context_items=60)
    assert np.allclose(every.own_fit_rmse(test, True), every.own_fit_rmse(test, False))
    assert not np.allclose(ctx, sc.own_fit_rmse(test, False))  # 15 of 60 items: the fits differ
