"""The ``digits-split`` scenario: PFLlib-style splits of the sklearn digits, each party with its own train/test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cluster.config import ConfigError, resolve
from cluster.pipeline import run
from fusion.io import load_warm_starter
from fusion.models.spec import spec_for_family
from scenarios import build, make_options


def _scenario(**opts):
    sc = build("digits-split", make_options("digits-split", opts))
    sc.prepare(4, 16, 4)
    return sc


@pytest.mark.parametrize("split", ["pathological", "dirichlet", "quantity"])
def test_parties_get_their_own_data_and_descriptors(split):
    sc = _scenario(split=split, alpha=1.0)
    x0, y0 = sc.party_train_data(4, 0, None)
    sizes = []
    for pid in range(20):
        d = sc.party_descriptor(4, pid)
        x, y = sc.party_train_data(4, pid, d)
        assert x.shape == x0.shape and y.shape == y0.shape  # padded to one size: parties train as one batch
        real = y[y >= 0]
        np.testing.assert_allclose(d, np.bincount(real, minlength=10) / len(real))
        ex, ey = sc.party_eval_data(4, pid, d)
        sizes.append(int((ey >= 0).sum()))
    np.testing.assert_array_equal(sc.party_weights(4, np.arange(20)), sizes)
    if split == "pathological":  # two digits per party
        assert all((sc.party_descriptor(4, p) > 0).sum() <= 2 for p in range(20))
    again = _scenario(split=split, alpha=1.0)
    np.testing.assert_array_equal(again.party_train_data(4, 7, None)[1], sc.party_train_data(4, 7, None)[1])


def test_padding_is_ignored_by_loss_and_metric():
    sc = _scenario()
    _, y = sc.party_eval_data(4, 3, None)
    y = torch.as_tensor(y[None])
    perfect = torch.nn.functional.one_hot(y.clamp(min=0), 10).float() * 30
    perfect[y < 0] = torch.nn.functional.one_hot(torch.tensor(5), 10).float() * 30  # padding predicted "wrong"
    assert float(sc.metric(perfect, y, None)) == 1.0
    assert float(sc.loss(perfect, y, None)) < 1e-6


def test_a_party_with_fewer_train_examples_than_k_gets_all_of_them_padded():
    sc = _scenario(split="dirichlet", alpha=0.1, min_samples=4)
    assert sc.max_shots is None
    pid = min(range(20), key=lambda p: len(sc.parts[p].train))
    have = len(sc.parts[pid].train)
    x, y = sc.party_shot_data(4, pid, None, have + 5)
    assert x.shape[0] == y.shape[0] == have + 5
    assert (y[:have] >= 0).all() and (y[have:] == -1).all()
    assert sorted(y[:have].tolist()) == sorted(sc._pool()[1][sc.parts[pid].train].tolist())
    x3, y3 = sc.party_shot_data(4, pid, None, 3)  # fewer than it has: the first 3 of the same shuffle
    np.testing.assert_array_equal(y3, y[:3])


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="scenario.split must be one of"):
        resolve({"scenario": {"name": "digits-split", "split": "zipf"}})
    with pytest.raises(ConfigError, match="scenario.alpha must be > 0, got 0"):
        resolve({"scenario": {"name": "digits-split", "alpha": 0}})


def test_a_run_reports_the_sample_weighted_mean(ray_session, tmp_path):
    cfg = resolve(
        {
            "scenario": {"name": "digits-split", "hidden": [16], "split": "dirichlet", "alpha": 0.5},
            "parties": 10,
            "test_parties": 4,
            "shots": [0, 3],
            "seed": 2,
            "methods": ["fusion", "nearest_task", "average"],
            "pretrain": {"steps": 60},
            "finetune": {"steps": 10},
            "fusion": {"gp": {"max_steps": 20, "inducing": 8}, "align_iters": 3, "refit_steps": 30},
            "out": str(tmp_path / "run"),
        }
    )
    res = run(cfg, log=lambda _: None)
    table = pq.read_table(res.out / "results.parquet")
    sc = build("digits-split", cfg.scenario_options)
    sc.prepare(cfg.seed, cfg.parties, cfg.test_parties)
    weights = dict(zip(range(10, 14), sc.party_weights(cfg.seed, np.arange(10, 14))))
    row = next(r for r in res.summary if r["method"] == "fusion" and r["shots"] == 0)
    sel = [(m == "fusion" and k == 0) for m, k in zip(table["method"].to_pylist(), table["shots"].to_pylist())]
    v = table["value"].to_numpy()[sel]
    w = np.array([weights[p] for p in table["party_id"].to_numpy()[sel]])
    assert row["weighted_mean"] == pytest.approx((v * w).sum() / w.sum()) and row["std"] == pytest.approx(v.std())
    assert "weighted_mean" in (res.out / "summary.csv").read_text().splitlines()[0]
    assert "sample-weighted mean" in res.table
    fused, _ = load_warm_starter(res.out / "fusion_model.pt")
    assert fused.output_kind == "logits"  # the scenario's outputs reached the fit: probabilities are combined


def test_archs_picks_one_family_for_every_party_and_checks_the_keys():
    assert _scenario(archs=["cnn-s"]).spec == spec_for_family("cnn-s", 64, 10)
    assert _scenario(archs=["mlp-32"], target_arch="mlp-32").spec.widths == (64, 32, 10)
    with pytest.raises(ConfigError, match="scenario.archs: unknown architecture family 'cnn-x'"):
        resolve({"scenario": {"name": "digits-split", "archs": ["cnn-x"]}})
    with pytest.raises(ConfigError, match="scenario.archs: .*shrink to nothing"):
        resolve({"scenario": {"name": "digits-split", "archs": ["cnn-m"]}})  # 8x8 sklearn digits are too small
    with pytest.raises(ConfigError, match="method gp cannot handle parties of mixed architecture families"):
        resolve({"scenario": {"name": "digits-split", "archs": ["cnn-s", "mlp-100"]}, "methods": ["fusion", "gp"]})
    sc = _scenario(archs=["mlp-32"], target_arch="cnn-s")
    assert sc.spec.widths == (64, 32, 10) and sc.target_spec == spec_for_family("cnn-s", 64, 10)
    with pytest.raises(ConfigError, match=r"\['nearest_task', 'average'\] cannot make warm starts of .* = 'cnn-s'"):
        resolve({"scenario": {"name": "digits-split", "target_arch": "cnn-s"}})


def test_a_run_of_cnn_parties_pretrains_fuses_and_writes_a_cnn_model(ray_session, tmp_path):
    cfg = resolve(
        {
            "scenario": {"name": "digits-split", "archs": ["cnn-s"], "split": "pathological", "min_samples": 20},
            "parties": 6,
            "test_parties": 2,
            "shots": [0, 3],
            "seed": 3,
            "methods": ["fusion", "nearest_task", "average", "matched_average"],
            "pretrain": {"steps": 15},
            "finetune": {"steps": 4, "every": 2},
            "fusion": {"gp": {"max_steps": 10, "inducing": 4}, "align_iters": 2, "refit_steps": 5},
            "out": str(tmp_path / "run"),
        }
    )
    res = run(cfg, log=lambda _: None)
    means = {(r["method"], r["shots"]): r["mean"] for r in res.summary}
    assert len(means) == 8 and all(0.0 <= v <= 1.0 for v in means.values())
    fused, spec = load_warm_starter(res.out / "fusion_model.pt")
    assert spec == spec_for_family("cnn-s", 64, 10) and fused.predict(np.full((1, 10), 0.1)).shape == (1, spec.n_params)


def test_novel_parties_of_another_family_get_function_space_warm_starts(ray_session, tmp_path):
    """MLP parties, novel parties asking for cnn-s: gp_refit's warm starts and the cold starts are CNNs."""
    cfg = resolve(
        {
            "scenario": {"name": "digits-split", "archs": ["mlp-16"], "target_arch": "cnn-s", "split": "pathological"},
            "parties": 6,
            "test_parties": 2,
            "shots": [0, 3],
            "seed": 3,
            "methods": ["fusion", "cold_start"],
            "pretrain": {"steps": 40},
            "finetune": {"steps": 4, "every": 2},
            "fusion": {"gp": {"max_steps": 10, "inducing": 4}, "align_iters": 2, "refit_steps": 30},
            "out": str(tmp_path / "run"),
        }
    )
    res = run(cfg, log=lambda _: None)
    means = {(r["method"], r["shots"]): r["mean"] for r in res.summary}
    assert len(means) == 4 and all(0.0 <= v <= 1.0 for v in means.values())
    _, spec = load_warm_starter(res.out / "fusion_model.pt")
    assert spec == spec_for_family("cnn-s", 64, 10)


def test_pool_splits_a_random_subset_drawn_from_the_seed():
    sc = _scenario(pool=600, split="pathological")
    again = _scenario(pool=600, split="pathological")
    assert len(sc.keep) == 600 and np.array_equal(sc.keep, again.keep)
    assert sum(len(p.train) + len(p.test) for p in sc.parts) <= 600
    assert sc._pool()[0].shape == (600, 64)
    with pytest.raises(ValueError, match="scenario.pool = 5000 is more than the 1797 images"):
        _scenario(pool=5000)
    with pytest.raises(ConfigError, match="scenario.pool must be >= 0"):
        resolve({"scenario": {"name": "digits-split", "pool": -1}})


def _partition_file(path, labels, parties=6, per_party=40, seed=0):
    """An .npz partition over a pool with ``labels``: disjoint rows, 3/4 train, with label arrays."""
    rows = np.random.default_rng(seed).permutation(len(labels))[: parties * per_party].reshape(parties, per_party)
    cut = per_party * 3 // 4
    arrays = {"num_clients": np.array(parties)}
    for k, r in enumerate(rows):
        arrays[f"client{k}_train"], arrays[f"client{k}_test"] = r[:cut], r[cut:]
        arrays[f"client{k}_train_labels"], arrays[f"client{k}_test_labels"] = labels[r[:cut]], labels[r[cut:]]
    np.savez(path, **arrays)
    return rows, cut


def test_a_partition_file_gives_every_party_exactly_its_rows(tmp_path):
    sc = build("digits-split", make_options("digits-split", {}))
    x_pool, labels = sc._pool()
    rows, cut = _partition_file(tmp_path / "p.npz", labels)
    sc = build("digits-split", make_options("digits-split", {"partition": str(tmp_path / "p.npz")}))
    sc.prepare(0, 4, 2)
    for k in range(6):
        x, y = sc.party_train_data(0, k, None)
        real = y >= 0
        assert np.array_equal(y[real], labels[rows[k, :cut]])
        assert np.array_equal(x[real], x_pool[rows[k, :cut]])
        ex, ey = sc.party_eval_data(0, k, None)
        assert np.array_equal(ey[ey >= 0], labels[rows[k, cut:]])
    assert np.allclose(sc.party_descriptor(0, 2), np.bincount(labels[rows[2, :cut]], minlength=10) / cut)


def test_a_bad_partition_file_is_refused_naming_the_problem(tmp_path):
    labels = build("digits-split", make_options("digits-split", {}))._pool()[1]
    _partition_file(tmp_path / "p.npz", labels)
    small = build("digits-split", make_options("digits-split", {"partition": str(tmp_path / "p.npz")}))
    with pytest.raises(ValueError, match="has 6 clients; the run asks for 8 parties"):
        small.prepare(0, 6, 2)
    z = dict(np.load(tmp_path / "p.npz"))
    z["client1_train_labels"] = (z["client1_train_labels"] + 1) % 10
    np.savez(tmp_path / "wrong.npz", **z)
    wrong = build("digits-split", make_options("digits-split", {"partition": str(tmp_path / "wrong.npz")}))
    with pytest.raises(ValueError, match="client1_train_labels disagree"):
        wrong.prepare(0, 4, 2)
    z = dict(np.load(tmp_path / "p.npz"))
    z["client2_test"] = z["client0_train"][:3]
    np.savez(tmp_path / "overlap.npz", **z)
    z.pop("client2_test_labels")
    np.savez(tmp_path / "overlap.npz", **z)
    overlap = build("digits-split", make_options("digits-split", {"partition": str(tmp_path / "overlap.npz")}))
    with pytest.raises(ValueError, match="client2_test repeats rows"):
        overlap.prepare(0, 4, 2)
    with pytest.raises(ValueError, match="cannot read it as .npz"):
        build("digits-split", make_options("digits-split", {"partition": str(tmp_path / "none.npz")})).prepare(0, 4, 2)
    with pytest.raises(ValueError, match="scenario.pool"):
        make_options("digits-split", {"partition": "p.npz", "pool": 100})


def test_centered_inputs_are_pfllibs_transform_of_the_unit_inputs():
    unit = build("digits-split", make_options("digits-split", {}))._pool()[0]
    centered = build("digits-split", make_options("digits-split", {"inputs": "centered"}))._pool()[0]
    assert np.allclose(centered, (unit - 0.5) / 0.5) and centered.min() == -1.0
    with pytest.raises(ValueError, match="scenario.inputs"):
        make_options("digits-split", {"inputs": "zscore"})


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "pfllib-mnist-dir0.1-20.npz").is_file(), reason="../shared/data not available")
def test_pfllibs_own_mnist_split_loads_with_its_labels():
    opts = {"source": "mnist", "data_dir": str(SHARED), "partition": str(SHARED / "pfllib-mnist-dir0.1-20.npz")}
    sc = build("digits-split", make_options("digits-split", opts))
    sc.prepare(0, 20, 0)  # the labels stored in the file are checked against MNIST's at those rows
    sizes = [len(sc.parts[k].train) + len(sc.parts[k].test) for k in range(20)]
    assert sum(sizes) == 70000


@pytest.mark.skipif(
    not (SHARED / "fashion-mnist").is_dir() and not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Fashion-MNIST not available",
)
def test_fashion_mnist_is_a_source_of_the_split_scenario():
    from scenarios import digit_sources

    folder = SHARED if (SHARED / "fashion-mnist").is_dir() else ""
    data = digit_sources.load("fashion-mnist", str(folder))
    assert data.train_x.shape == (60000, 784) and data.test_x.shape == (10000, 784)
    assert set(np.unique(data.train_y)) == set(range(10))
    mnist = digit_sources.load("mnist", str(SHARED)) if (SHARED / "mnist").is_dir() else None
    assert mnist is None or not np.array_equal(mnist.train_y[:100], data.train_y[:100])


def test_feature_shift_rotates_each_partys_images_and_its_descriptor_says_how():
    sc = build("digits-split", make_options("digits-split", {"shift": True, "angles": [0, 90], "intensity": [0.5, 1]}))
    sc.prepare(3, 12, 4)
    plain = build("digits-split", make_options("digits-split", {}))
    plain.prepare(3, 12, 4)
    seen = set()
    for pid in range(16):
        angle, ink = sc.party_shift(3, pid)
        d = sc.party_descriptor(3, pid)
        assert d.shape == (12,) and d[10] == angle / 90 and d[11] == ink and 0.5 <= ink <= 1
        assert np.allclose(d[:10], plain.party_descriptor(3, pid))  # the same split, the same labels
        x, y = sc.party_train_data(3, pid, d)
        x0, y0 = plain.party_train_data(3, pid, None)
        assert np.array_equal(y, y0)
        img, img0 = x[0].reshape(8, 8), x0[0].reshape(8, 8)
        want = np.rot90(img0) if angle == 90 else img0  # scipy rotates counter-clockwise, as rot90 does
        assert np.allclose(img, np.clip(want * ink, 0, 1), atol=1e-5)
        seen.add(angle)
    assert seen == {0.0, 90.0}
    again = build("digits-split", make_options("digits-split", {"shift": True, "angles": [0, 90]}))
    again.prepare(3, 12, 4)
    assert [again.party_shift(3, p)[0] for p in range(16)] == [sc.party_shift(3, p)[0] for p in range(16)]
    with pytest.raises(ValueError, match="scenario.intensity"):
        make_options("digits-split", {"intensity": [0, 1]})


def test_with_feature_shift_the_probe_covers_every_rotation():
    sc = build("digits-split", make_options("digits-split", {"shift": True, "angles": [0, 90], "intensity": [0.5, 1]}))
    sc.prepare(3, 12, 4)
    plain = build("digits-split", make_options("digits-split", {}))
    plain.prepare(3, 12, 4)

    probe, probe0 = sc.probe_inputs(), plain.probe_inputs()

    assert probe.shape == probe0.shape
    imgs, imgs0 = probe.reshape(-1, 8, 8), probe0.reshape(-1, 8, 8)
    assert np.allclose(imgs[0::2], np.clip(imgs0[0::2] * 0.75, 0, 1), atol=1e-5)  # 0 degrees, the middle ink
    assert np.allclose(imgs[1::2], np.clip(np.rot90(imgs0[1::2], axes=(1, 2)) * 0.75, 0, 1), atol=1e-5)


def test_with_feature_shift_zero_shots_are_an_empty_set_of_images():
    sc = build("digits-split", make_options("digits-split", {"shift": True, "angles": [30]}))
    sc.prepare(3, 12, 4)

    x, y = sc.party_shot_data(3, 13, sc.party_descriptor(3, 13), 0)

    assert x.shape == (0, 64) and x.dtype == np.float32 and y.shape == (0,)


def test_a_relative_partition_path_is_also_looked_up_in_the_data_folder(tmp_path, monkeypatch):
    labels = build("digits-split", make_options("digits-split", {}))._pool()[1]
    (tmp_path / "data").mkdir()
    rows, cut = _partition_file(tmp_path / "data" / "p.npz", labels)
    monkeypatch.chdir(tmp_path)  # "p.npz" is not here: the data folder's is read
    sc = build("digits-split", make_options("digits-split", {"partition": "p.npz", "data_dir": str(tmp_path / "data")}))
    sc.prepare(0, 4, 2)
    assert np.array_equal(sc.party_train_data(0, 3, None)[1][:cut], labels[rows[3, :cut]])
    (tmp_path / "p.npz").write_bytes(b"not an npz")  # a file of that name here comes first, as given
    with pytest.raises(ValueError, match="scenario.partition = 'p.npz': cannot read it"):
        build(
            "digits-split", make_options("digits-split", {"partition": "p.npz", "data_dir": str(tmp_path / "data")})
        ).prepare(0, 4, 2)
