"""The HtFL algorithms (``lg_fedavg``, ``fd``, ``fedproto``, ``fedtgp``, ``fedgh``): the shared frame of
``fusion/federated/htfl.py``, a contract every one keeps on parties of two families (shard invariance among it),
and per algorithm a hand computation of its server step."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from cluster.config import ConfigError, resolve
from fusion.adapt.finetuning import finetune
from fusion.adapt.train_config import FinetuneConfig
from fusion.federated import ALGORITHMS, FederatedConfig, htfl
from fusion.federated.fedtgp import adaptive_margin
from fusion.federated.rounds import Parties, run_rounds
from fusion.models.params import forward, init_params, loss_and_grad
from fusion.models.spec import MLPSpec, spec_for_family

HTFL = ["fd", "fedgh", "fedproto", "fedtgp", "lg_fedavg"]
C, D, N_IN = 4, 6, 9  # classes, feature_dim, inputs (3x3 "images": cnn families work too)
FAMILIES = (MLPSpec((N_IN, 8, C)), MLPSpec((N_IN, 6, C)))
CFG = FederatedConfig(rounds=3, clients_per_round=0.5, local_steps=3, lr=0.01, feature_dim=D)
SEED = 5


def _task_loss(pred, y, descriptors):
    """Cross-entropy over the real rows (label -1 is padding): (P,)."""
    real = y >= 0
    nll = -torch.log_softmax(pred, -1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (nll * real).sum(1) / real.sum(1).clamp(min=1)


def _parties(n: int = 6, rows: int = 10, families=FAMILIES) -> Parties:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, C, (n, rows), generator=g)
    x = torch.randn(n, rows, N_IN, generator=g) + torch.nn.functional.one_hot(y, N_IN).float() * 2
    y[0, -3:] = -1  # party 0 holds 7 real rows
    counts = (y >= 0).sum(1).float()
    desc = torch.nn.functional.one_hot(y.clamp(min=0), C).float().mean(1)
    fam = np.arange(n) % len(families)  # party i's family: i mod 2 (a function of the id only)

    def groups(ids):
        f = fam[np.asarray(ids)]
        return [(np.flatnonzero(f == k), families[k]) for k in np.unique(f)]

    loss_of = lambda d: lambda pred, t: _task_loss(pred, t, d)  # noqa: E731
    return Parties(np.arange(n, dtype=np.int64), x, y, desc, counts, loss_of, groups)


def _algo(name, cfg=CFG, **settings):
    cls = ALGORITHMS[name]
    return cls(cfg, cls.settings(**settings) if settings else None)


def _run(algo, shards=1, rounds=None, parties=None):
    init = np.zeros(1, np.float32)  # (the HtFL algorithms start from each party's own init)
    return run_rounds(algo, FAMILIES[0], parties or _parties(), init, SEED, rounds=rounds, shards=shards)


# -- the shared frame ---------------------------------------------------------------------------------------------


def test_feature_spec_adds_a_feature_layer_only_when_the_width_differs():
    assert htfl.feature_spec(MLPSpec((9, 6, 4)), 6) == MLPSpec((9, 6, 4))
    assert htfl.feature_spec(MLPSpec((9, 8, 4)), 6) == MLPSpec((9, 8, 6, 4))
    cnn = htfl.feature_spec(spec_for_family("cnn-s", 64, 10), 100)
    assert cnn.fc == (128, 100) and cnn.family == "cnn-s+f100"
    assert htfl.feature_dim(0, (spec_for_family("mlp-100", 784, 10), spec_for_family("cnn-m", 784, 10))) == 100
    assert htfl.feature_dim(64, FAMILIES) == 64


@pytest.mark.parametrize("spec", [MLPSpec((9, 8, 6, 4)), htfl.feature_spec(spec_for_family("cnn-s", 64, 4), 6)])
def test_feature_gradients_equal_autograd_through_the_whole_model(spec):
    g = torch.Generator().manual_seed(1)
    flat = torch.stack([init_params(spec, g) for _ in range(3)]).double()
    x = torch.randn(3, 5, spec.fan_in, generator=g).double()
    y = torch.randint(0, 4, (3, 5), generator=g)
    target = torch.randn(4, 6, generator=g).double()

    def loss(feats, logits, t):
        return _task_loss(logits, t, None) + ((feats - target[t]) ** 2).mean((1, 2))

    losses, grad = htfl.loss_and_grad_features(flat, spec, x, y, loss)
    w = flat.clone().requires_grad_(True)
    feats = htfl.features(w, spec, x)
    logits = forward(w, spec, x)
    (expected,) = torch.autograd.grad(loss(feats, logits, y).sum(), w)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(losses, loss(feats, logits, y).detach())
    same = loss_and_grad(flat, spec, x, y, lambda p, t: _task_loss(p, t, None))[1]  # no feature term: the usual
    torch.testing.assert_close(
        htfl.loss_and_grad_features(flat, spec, x, y, lambda f, lg, t: _task_loss(lg, t, None))[1], same
    )


def test_prototype_head_predicts_the_nearest_prototype():
    g = torch.Generator().manual_seed(2)
    protos, feats = torch.randn(4, 6, generator=g), torch.randn(50, 6, generator=g)
    have = np.array([1, 1, 0, 1], bool)
    head = torch.as_tensor(htfl.prototype_head(protos.numpy(), have))
    logits = feats @ head[:24].view(4, 6).T + head[24:]
    dist = torch.cdist(feats, protos)
    dist[:, 2] = float("inf")
    assert (logits.argmax(1) == dist.argmin(1)).all()


# -- the contract ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HTFL)
def test_every_htfl_algorithm_keeps_the_contract(name):
    # Prepare
    algo = _algo(name)
    parties = _parties()

    # Execute
    result = _run(algo, parties=parties)
    sharded = _run(_algo(name), shards=3, parties=parties)
    starts = {spec: algo.novel(result.server, spec) for spec in FAMILIES}

    # Assert: the sharding changes nothing beyond float32 rounding, amplified by training (on some CPUs a batched
    # product's kernel, and so its summation order, depends on how many models share the batch; FedTGP's generator
    # takes 100 server steps on the uploaded prototypes, which amplify it most), personal models are each party's
    # own family's model
    assert result.server.keys() == sharded.server.keys()
    for key in result.server:
        atol = 5e-2 if key == "generator" else 1e-4
        np.testing.assert_allclose(result.server[key], sharded.server[key], rtol=1e-3, atol=atol, err_msg=key)
    mine, theirs = result.store.export(), sharded.store.export()
    assert mine.keys() == theirs.keys() and "size.model" in mine
    for key in mine:
        np.testing.assert_allclose(mine[key], theirs[key], rtol=1e-3, atol=1e-4, err_msg=key)
    sizes = [algo.model_spec(FAMILIES[i % 2]).n_params for i in mine["party_id"]]
    assert mine["size.model"].tolist() == sizes
    assert result.costs.rounds == 3 and result.costs.upload_bytes > 0
    for spec, start in starts.items():
        model = algo.model_spec(spec)
        preds = start.predict(np.zeros((2, C)))
        assert start.spec == model and preds.shape == (2, model.n_params) and np.isfinite(preds).all()
        buffer = io.BytesIO()
        torch.save(start.export(), buffer)
        buffer.seek(0)
        restored = type(start).restore(torch.load(buffer, weights_only=True))
        np.testing.assert_array_equal(restored.predict(np.zeros((2, C))), preds)
        warm = torch.as_tensor(preds)
        x, y = parties.x[:2, :6], parties.y[:2, :6]
        cons = start.constraint_for(warm)
        tuned = finetune(warm, model, x, y, _task_loss, parties.descriptors[:2], FinetuneConfig(steps=6, every=3), cons)
        assert torch.isfinite(tuned).all()
        if start.body_only:  # the shared head stays as received
            torch.testing.assert_close(tuned[:, htfl.n_body(model) :], warm[:, htfl.n_body(model) :])


def test_a_restored_store_continues_like_the_kept_one():
    algo = _algo("fedproto")
    result = _run(algo)
    from fusion.federated.rounds import PartyStore

    back = PartyStore.restore(result.store.export())
    for i, row in result.store.rows.items():
        torch.testing.assert_close(back.rows[i]["model"], row["model"])


def test_stores_of_shards_with_different_families_merge_and_restore():
    """Two shards, one hosting only mlp-8 parties, one only mlp-6 parties: their exports differ in width (the
    engine's checkpoint of personal states)."""
    from fusion.federated.rounds import PartyStore, merge_exports

    a, b = PartyStore(), PartyStore()
    a.update(np.array([0, 2]), {"model": torch.ones(2, 5)})
    b.update(np.array([1]), {"model": torch.full((1, 3), 2.0)})
    merged = merge_exports([a.export(), {}, b.export()])
    assert merged["party_id"].tolist() == [0, 1, 2] and merged["size.model"].tolist() == [5, 3, 5]
    back = PartyStore.restore(merged)
    assert back.rows[1]["model"].tolist() == [2.0, 2.0, 2.0] and back.rows[2]["model"].shape == (5,)
    same = merge_exports([a.export(), a.export()])
    assert "size.model" not in same and same["model"].shape == (4, 5)


# -- server steps by hand -------------------------------------------------------------------------------------------


def _one_round(name, **settings):
    """All six parties, one round, no local steps: the uploads are the parties' own inits' statistics."""
    cfg = FederatedConfig(rounds=1, clients_per_round=1.0, local_steps=0, local_epochs=0, feature_dim=D)
    algo = _algo(name, cfg, **settings)
    return algo, _run(algo, parties=_parties())


def _inits_stats(algo, parties, of):
    """Per party (in id order) its init's class means of ``of(model, spec, x)`` and its class counts."""
    means, counts = [], []
    for i in range(len(parties.ids)):
        spec = algo.model_spec(FAMILIES[i % 2])
        model = htfl.party_inits(spec, SEED, [i])
        m, c = htfl.class_means(of(model, spec, parties.x[i : i + 1]), parties.y[i : i + 1], C)
        means.append(m[0].double())
        counts.append(c[0].double())
    return torch.stack(means), torch.stack(counts)


def test_fedproto_global_prototype_is_the_count_weighted_mean_of_class_means():
    algo, result = _one_round("fedproto")
    means, counts = _inits_stats(algo, _parties(), htfl.features)
    expected = (counts[:, :, None] * means).sum(0) / counts.sum(0)[:, None]
    np.testing.assert_allclose(result.server["protos"], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert (result.server["have"] == 1).all()


def test_fd_global_logits_are_the_count_weighted_mean_of_class_mean_logits():
    algo, result = _one_round("fd")
    means, counts = _inits_stats(algo, _parties(), forward)
    expected = (counts[:, :, None] * means).sum(0) / counts.sum(0)[:, None]
    np.testing.assert_allclose(result.server["logits"], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_lg_fedavg_without_local_steps_keeps_the_global_head_and_averages_trained_heads():
    algo, result = _one_round("lg_fedavg")
    first = algo.init_server(FAMILIES[0], np.zeros(1), np.zeros((6, C)), SEED)["head"]
    np.testing.assert_allclose(result.server["head"], first, rtol=1e-6)  # every upload was the global head
    cfg = FederatedConfig(rounds=1, clients_per_round=1.0, local_steps=2, feature_dim=D)
    algo = _algo("lg_fedavg", cfg)
    result = _run(algo)
    heads = [p["model"][htfl.n_body(algo.model_spec(FAMILIES[i % 2])) :] for i, p in sorted(result.store.rows.items())]
    counts = _parties().counts.double()
    expected = (counts[:, None] * torch.stack(heads).double()).sum(0) / counts.sum()
    np.testing.assert_allclose(result.server["head"], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_fedgh_server_fits_its_head_to_the_uploaded_prototypes():
    _, still = _one_round("fedgh", server_steps=0)
    algo, trained = _one_round("fedgh", server_steps=50, server_lr=0.05)
    first = algo.init_server(FAMILIES[0], np.zeros(1), np.zeros((6, C)), SEED)["head"]
    np.testing.assert_array_equal(still.server["head"], first)
    means, counts = _inits_stats(algo, _parties(), htfl.features)
    party, cls = np.nonzero(counts.numpy() > 0)
    x, y = means[party, cls].float(), torch.as_tensor(cls)

    def ce(head):
        head = torch.as_tensor(head)
        return torch.nn.functional.cross_entropy(x @ head[: C * D].view(C, D).T + head[C * D :], y)

    assert ce(trained.server["head"]) < ce(first)


def test_fedtgp_margin_and_generator():
    means = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    # nearest other class: 1, 3, 1 (class 3 not held) -> the largest is 3; capped at 2
    assert adaptive_margin(means, np.array([1, 1, 1, 0], bool), 100.0) == pytest.approx(3.0)
    assert adaptive_margin(means, np.array([1, 1, 1, 0], bool), 2.0) == 2.0
    assert adaptive_margin(means, np.array([1, 0, 0, 0], bool), 5.0) == 0.0
    algo, result = _one_round("fedtgp", hidden=16, server_steps=30, server_lr=0.05)
    means, counts = _inits_stats(algo, _parties(), htfl.features)
    pooled = ((counts[:, :, None] * means).sum(0) / counts.sum(0)[:, None]).numpy()
    margin = float(result.server["margin"])
    assert result.server["protos"].shape == (C, D) and margin == pytest.approx(
        adaptive_margin(pooled, np.ones(C, bool), 100.0)
    )
    party, cls = np.nonzero(counts.numpy() > 0)
    x, y = means[party, cls].float(), torch.as_tensor(cls)

    def objective(protos):  # the adaptive-margin contrastive loss the server minimizes
        dist = torch.cdist(x, torch.as_tensor(protos))
        return torch.nn.functional.cross_entropy(-(dist + margin * torch.nn.functional.one_hot(y, C)), y)

    first = algo.init_server(FAMILIES[0], np.zeros(1), np.zeros((6, C)), SEED)["protos"]
    assert objective(result.server["protos"]) < objective(first)


def test_htfl_methods_need_a_classification_scenario():
    with pytest.raises(ConfigError, match="method fedproto needs a classification scenario"):
        resolve({"scenario": "sine", "methods": ["fusion", "fedproto"]})
    assert resolve({"scenario": {"name": "digits-split", "archs": ["mlp-16", "cnn-s"]}, "methods": HTFL})


def test_a_mixed_family_run_trains_every_htfl_algorithm_and_counts_its_bytes(ray_session, tmp_path):
    from cluster.pipeline import run

    cfg = resolve(
        {
            "scenario": {"name": "digits-split", "archs": ["mlp-16", "cnn-s"], "split": "pathological"},
            "parties": 8,
            "test_parties": 4,
            "shots": [0, 3],
            "seed": 3,
            "methods": ["nearest_task", *HTFL, "cold_start"],
            "pretrain": {"steps": 5},
            "finetune": {"steps": 4, "every": 2},
            "federated": {"rounds": 2, "clients_per_round": 0.5, "local_steps": 2},
            "out": str(tmp_path / "run"),
        }
    )
    res = run(cfg, log=lambda _: None)
    means = {(r["method"], r["shots"]): r["mean"] for r in res.summary}
    assert len(means) == 2 * 7 and all(0.0 <= v <= 1.0 for v in means.values())
    head = (10 * 16 + 10) * 4  # feature_dim 0 -> 16, the smaller last hidden width (mlp-16; cnn-s gets a 16-unit layer)
    lg = res.costs["lg_fedavg"]
    assert lg["rounds"] == 2 and lg["upload_bytes"] == 2 * 4 * head
    assert lg["download_bytes"] == 2 * 4 * head + 4 * head  # the broadcasts, then each novel party's head
    assert res.costs["fd"]["download_bytes"] == 2 * 4 * (10 * 10 + 10) * 4  # its novel parties download nothing
    assert res.costs["fedproto"]["upload_bytes"] == 2 * 4 * (10 * 16 + 10) * 4  # prototypes and class counts
