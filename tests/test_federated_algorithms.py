"""The iterative federated algorithms (pure, no Ray): a contract every registered one keeps, and per algorithm the
reductions to a simpler method that pin down its update rule. Tiny sine tasks through the in-process runner."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from fusion.adapt.finetuning import finetune
from fusion.adapt.train_config import FinetuneConfig, TrainConfig
from fusion.adapt.training import train
from fusion.federated import ALGORITHMS, FederatedConfig
from fusion.federated.base import local_rng, no_zero_shot, sample
from fusion.federated.fedrep import body_size
from fusion.federated.local import LocalTraining, plan
from fusion.federated.pfedhn import encoder_size, output_scale
from fusion.federated.rounds import Parties, run_rounds
from fusion.models.params import forward, init_params
from fusion.models.spec import MLPSpec

SPEC = MLPSpec((1, 8, 1))
CFG = FederatedConfig(rounds=3, clients_per_round=0.5, local_steps=4, lr=0.01)
INIT = init_params(SPEC, torch.Generator().manual_seed(1)).numpy()
SEED = 7
REGRESSION = sorted(n for n, cls in ALGORITHMS.items() if not cls.classification)  # the HtFL ones: tests/test_htfl.py


def _task_loss(pred, y, descriptors):
    """Squared error over the real rows (NaN targets are padding) relative to the amplitude²: (P,)."""
    real = ~torch.isnan(y)
    sq = ((pred - y.nan_to_num()) * real) ** 2
    return sq.sum(dim=(1, 2)) / real.sum(dim=(1, 2)).clamp_min(1) / descriptors[:, 0] ** 2


def _loss_of(descriptors):
    return lambda pred, y: _task_loss(pred, y, descriptors)


def _sines(n: int, n_rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Descriptors (n, 2) = (amplitude, phase), x (n, n_rows, 1) in [-4, 4], y = a·sin(x + b)."""
    g = torch.Generator().manual_seed(seed)
    desc = torch.stack([torch.rand(n, generator=g) * 2 + 0.5, torch.rand(n, generator=g) * 3], dim=1)
    x = torch.rand(n, n_rows, 1, generator=g) * 8 - 4
    return desc, x, desc[:, :1, None] * torch.sin(x + desc[:, 1:, None])


def _parties(n: int = 6, n_rows: int = 12) -> Parties:
    desc, x, y = _sines(n, n_rows, seed=0)
    y[0, -3:] = float("nan")  # party 0 holds 9 real rows, padded to 12
    counts = torch.full((n,), float(n_rows))
    counts[0] = n_rows - 3
    return Parties(np.arange(n, dtype=np.int64), x, y, desc, counts, _loss_of)


def _algo(name: str, cfg: FederatedConfig = CFG, **settings):
    cls = ALGORITHMS[name]
    return cls(cfg, cls.settings(**settings) if settings else None)


def _run(algo, shards: int = 1, rounds: int | None = None, parties: Parties | None = None):
    """run_rounds, also returning every round's uploads as the server received them."""
    seen, aggregate, aggregate_async = [], algo.aggregate, algo.aggregate_async

    def recording(server, uploads, weights, ids):
        seen.append(uploads)
        return aggregate(server, uploads, weights, ids)

    def recording_async(server, uploads, weights, ids, arrival, t):
        seen.append(uploads)
        return aggregate_async(server, uploads, weights, ids, arrival, t)

    algo.aggregate, algo.aggregate_async = recording, recording_async
    return run_rounds(algo, SPEC, parties or _parties(), INIT, SEED, rounds=rounds, shards=shards), seen


# -- the contract ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REGRESSION)
def test_every_algorithm_keeps_the_contract(name):
    # Prepare
    algo = _algo(name)
    novel_desc, x_shots, y_shots = _sines(4, 5, seed=3)

    # Execute
    result, uploads = _run(algo)
    sharded, _ = _run(_algo(name), shards=3)
    start = algo.novel(result.server, SPEC)
    preds = start.predict(novel_desc.numpy())
    buffer = io.BytesIO()
    torch.save(start.export(), buffer)
    buffer.seek(0)
    restored = type(start).restore(torch.load(buffer, weights_only=True))
    warm = torch.as_tensor(preds)
    cfg = FinetuneConfig(steps=10, every=5)
    tuned = finetune(warm, SPEC, x_shots, y_shots, _task_loss, novel_desc, cfg, start.constraint_for(warm))

    # Assert
    assert len(uploads) == 3 and result.costs.rounds == 3
    assert all(np.isfinite(u).all() for up in uploads for u in up.values())
    assert preds.shape == (4, SPEC.n_params) and preds.dtype == np.float32 and np.isfinite(preds).all()
    np.testing.assert_array_equal(restored.predict(novel_desc.numpy()), preds)
    assert torch.isfinite(tuned).all()
    assert result.server.keys() == sharded.server.keys()
    for key in result.server:
        np.testing.assert_array_equal(result.server[key], sharded.server[key], err_msg=key)
    mine, theirs = result.store.export(), sharded.store.export()
    assert mine.keys() == theirs.keys() and (bool(mine) == algo.personal)
    for key in mine:
        np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)
    counts = _parties().counts.numpy()
    chosen = [sample(SEED, r, np.arange(6), CFG.clients_per_round) for r in range(3)]
    assert result.costs.party_steps == sum(int(algo.party_steps(counts[c]).sum()) for c in chosen)


@pytest.mark.parametrize("name", REGRESSION)
def test_every_algorithm_learns_something(name):
    parties = _parties()
    cfg = FederatedConfig(rounds=10, clients_per_round=1.0, local_steps=10, lr=0.01)
    algo = _algo(name, cfg)
    result, _ = _run(algo, parties=parties)
    start = algo.novel(result.server, SPEC)
    fit = lambda params: _task_loss(forward(params, SPEC, parties.x), parties.y, parties.descriptors).mean()  # noqa: E731
    before = fit(torch.as_tensor(INIT)[None].expand(6, -1))
    after = fit(torch.as_tensor(start.predict(parties.descriptors.numpy())))
    if name != "fedrep":  # FedRep's 0-shot head is the init head: its 0-shot model is not meant to fit
        assert after < before


# -- local training ------------------------------------------------------------------------------------------------


def test_minibatches_hold_a_partys_real_rows_and_an_epoch_sees_each_once():
    # Prepare: parties of 9, 12 and 3 real rows in stacks of 12; minibatches of 5, two epochs
    train_cfg = LocalTraining(epochs=2, batch_size=5)
    rngs = [np.random.default_rng(i) for i in range(3)]

    # Execute
    schedule = plan(train_cfg, np.array([9, 12, 3]), 12, rngs)

    # Assert: ⌈2 · n_i / b_i⌉ steps (b_i = min(5, n_i)); each epoch's rows a permutation of the real ones; the
    # 3-row party's minibatches are its 3 rows and padding (row 3) in the 2 slots it does not fill
    assert list(schedule.steps) == [4, 5, 2] and schedule.idx.shape == (5, 1, 3, 5)
    stream = schedule.idx[:4, 0, 0].flatten().tolist()
    assert sorted(stream[:9]) == list(range(9)) and sorted(stream[9:18]) == list(range(9))
    assert sorted(schedule.idx[:5, 0, 1].flatten().tolist()[:12]) == list(range(12))
    small = schedule.idx[:2, 0, 2]
    assert sorted(small[:, :3].flatten().tolist()) == [0, 0, 1, 1, 2, 2] and (small[:, 3:] == 3).all()


def test_a_party_whose_epoch_is_over_is_left_as_it_is_while_the_others_train():
    # Prepare: party 0 holds 9 real rows, the others 12; one epoch of minibatches of 3 (3 and 4 steps)
    cfg = FederatedConfig(rounds=1, clients_per_round=1.0, batch_size=3, lr=0.01)
    parties = _parties()
    alone = Parties(parties.ids[:1], parties.x[:1, :9], parties.y[:1, :9], parties.descriptors[:1],
                    parties.counts[:1], _loss_of)  # fmt: skip

    # Execute
    together, uploads = _run(_algo("fedavg", cfg), parties=parties)
    by_itself, own = _run(_algo("fedavg", cfg), parties=alone)

    # Assert: party 0's model is the one it trains without the padding and without the others (its 3 steps)
    assert list(_algo("fedavg", cfg).party_steps(parties.counts.numpy())) == [3, 4, 4, 4, 4, 4]
    assert together.costs.party_steps == 3 + 5 * 4 and by_itself.costs.party_steps == 3
    np.testing.assert_array_equal(uploads[0]["w"][0], own[0]["w"][0])


def test_a_persistent_optimizer_state_does_not_depend_on_the_sharding_and_is_kept_per_party():
    cfg = FederatedConfig(rounds=4, clients_per_round=0.5, local_steps=3, lr=0.01, momentum=0.9,
                          optimizer_state="persistent")  # fmt: skip
    one, _ = _run(_algo("ditto", cfg))
    three, _ = _run(_algo("ditto", cfg), shards=3)
    mine, theirs = one.store.export(), three.store.export()
    assert {"v", "opt.w.buf", "opt.v.buf"} <= set(mine) and mine.keys() == theirs.keys()
    for key in mine:
        np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)
    np.testing.assert_array_equal(one.server["w"], three.server["w"])


# -- reductions ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hessian_free", [False, True])
def test_per_fedavg_without_inner_step_is_fedavg_with_sgd(hessian_free):
    cfg = FederatedConfig(rounds=3, clients_per_round=0.5, local_steps=4, lr=0.05, batch_size=0)
    per, _ = _run(_algo("per_fedavg", cfg, alpha=0.0, inner="sgd", split=False, hessian_free=hessian_free))
    avg, _ = _run(_algo("fedavg", cfg))
    np.testing.assert_array_equal(per.server["w"], avg.server["w"])


def test_per_fedavg_hessian_free_step_follows_the_maml_gradient():
    # Prepare: one local step of SGD at lr 1 on all rows, so the party's upload is w − (its meta-gradient).
    parties, alpha = _parties(), 0.05
    cfg = FederatedConfig(rounds=1, clients_per_round=1.0, local_steps=1, lr=1.0, batch_size=0)
    w = torch.as_tensor(INIT, dtype=torch.float64)[None].expand(6, -1).clone().requires_grad_(True)
    x, y, d = parties.x.double(), parties.y.double(), parties.descriptors.double()
    inner_grad = torch.autograd.grad(_task_loss(forward(w, SPEC, x), y, d).sum(), w, create_graph=True)[0]
    outer = _task_loss(forward(w - alpha * inner_grad, SPEC, x), y, d).sum()
    exact = torch.autograd.grad(outer, w)[0].float().numpy()

    # Execute
    steps = {}
    for hf in (False, True):
        algo = _algo("per_fedavg", cfg, alpha=alpha, inner="sgd", split=False, hessian_free=hf)
        _, uploads = _run(algo, parties=parties)
        steps[hf] = INIT - uploads[0]["w"]

    # Assert: the Hessian-free step is the exact MAML gradient up to the finite difference; first order is not.
    err = {hf: np.abs(step - exact).max() / np.abs(exact).max() for hf, step in steps.items()}
    assert err[True] < 1e-2 < err[False]


def _pfllib_per_fedavg(w, x, y, d, n_real, b, alpha, beta, passes, rng):
    """PFLlib's clientperavg.train, called ``passes`` times, for one party: per step a loader batch of 2b rows from
    the pass's permutations, a temporary step of alpha on its first half, the gradient of its second half at the
    temporary weights, the weights restored, a step of beta. Also returns the rows each step used."""
    w, used = w.clone(), []
    loss = lambda v, rows: _task_loss(forward(v[None], SPEC, x[None, rows]), y[None, rows], d[None]).sum()  # noqa: E731
    steps = -(-n_real // (2 * b))
    for _ in range(passes):
        need = steps * 2 * b
        stream = np.concatenate([rng.permutation(n_real) for _ in range(-(-need // n_real))])[:need]
        for t in range(steps):
            batch = stream[2 * b * t : 2 * b * (t + 1)]
            first, second = torch.as_tensor(batch[:b]), torch.as_tensor(batch[b:])
            v = w.clone().requires_grad_(True)
            temp = (w - alpha * torch.autograd.grad(loss(v, first), v)[0]).requires_grad_(True)
            g = torch.autograd.grad(loss(temp, second), temp)[0]
            w = w - beta * g
            used.append(batch)
    return w, used


@pytest.mark.parametrize("passes", [1, 2])
def test_per_fedavg_takes_pfllibs_steps_two_minibatches_each_over_its_passes(passes):
    # Prepare: one round, every party, one epoch of minibatches of 3 rows (party 0: 9 real rows, the others 12).
    parties, alpha, beta, b = _parties(), 0.05, 0.1, 3
    cfg = FederatedConfig(rounds=1, clients_per_round=1.0, local_epochs=1, batch_size=b, lr=0.01)
    algo = _algo("per_fedavg", cfg, alpha=alpha, beta=beta, passes=passes)
    w0 = torch.as_tensor(INIT)

    # Execute
    _, uploads = _run(algo, parties=parties)
    refs = []
    for i in range(6):
        n_real = int(parties.counts[i])
        rng = local_rng(SEED, i, 0)
        x, y, d = parties.x[i], parties.y[i], parties.descriptors[i]
        refs.append(_pfllib_per_fedavg(w0, x, y, d, n_real, b, alpha, beta, passes, rng))

    # Assert: the same weights as the hand-written loop; ⌈n / 2b⌉ steps of 2b real rows a pass (distinct rows when
    # 2b divides n: the 12-row parties; party 0's last batch is completed from the next permutation).
    for i, (w_ref, used) in enumerate(refs):
        np.testing.assert_allclose(uploads[0]["w"][i], w_ref.numpy(), rtol=1e-4, atol=1e-6, err_msg=f"party {i}")
        n_real = int(parties.counts[i])
        assert len(used) == passes * -(-n_real // (2 * b))
        assert all(rows.max() < n_real for rows in used)
        if i > 0:
            assert all(len(set(rows.tolist())) == 2 * b for rows in used)
    counts = parties.counts.numpy()
    assert list(algo.party_steps(counts[:2])) == [2 * passes * 2, 2 * passes * 2]  # ⌈9/6⌉ = ⌈12/6⌉ = 2 steps


def test_per_fedavg_participating_model_is_one_sgd_step_of_alpha_on_one_minibatch():
    # Prepare: PFLlib's evaluate_one_step, train_one_step: one minibatch of b rows, one SGD step of alpha.
    parties, alpha, b = _parties(), 0.05, 4
    cfg = FederatedConfig(rounds=1, clients_per_round=1.0, batch_size=b, lr=0.01, momentum=0.5)
    algo = _algo("per_fedavg", cfg, alpha=alpha)
    ids = np.arange(6)
    batch = parties.batch(ids, SPEC, cfg, SEED, 0)
    down = {"w": torch.as_tensor(INIT)}

    # Execute
    models = algo.participant_models(down, None, batch).numpy()

    # Assert
    for i in ids:
        n_real = int(parties.counts[i])
        rows = torch.as_tensor(local_rng(SEED, i, 0).permutation(n_real)[:b])
        v = torch.as_tensor(INIT).clone().requires_grad_(True)
        d = parties.descriptors[i]
        loss = _task_loss(forward(v[None], SPEC, parties.x[i, rows][None]), parties.y[i, rows][None], d[None])
        want = INIT - alpha * torch.autograd.grad(loss.sum(), v)[0].numpy()
        np.testing.assert_allclose(models[i], want, rtol=1e-4, atol=1e-6, err_msg=f"party {i}")


def test_ditto_without_pull_trains_the_personal_model_locally():
    # Prepare: every party sampled every round, so its v trains `personal_steps` fresh steps per round from w_0.
    cfg = FederatedConfig(rounds=3, clients_per_round=1.0, local_steps=4, lr=0.01, batch_size=0)
    parties = _parties()

    # Execute
    result, _ = _run(_algo("ditto", cfg, lam=0.0, personal_steps=6), parties=parties)
    local = torch.as_tensor(INIT)[None].expand(6, -1)
    for _ in range(3):
        one = TrainConfig(steps=6, lr=0.01, decay=False, optimizer="sgd")
        local = train(local, SPEC, parties.x, parties.y, _loss_of(parties.descriptors), one)

    # Assert
    np.testing.assert_array_equal(result.store.export()["v"], local.numpy())


def test_ditto_pull_keeps_the_personal_model_nearer_the_global_one():
    cfg = FederatedConfig(rounds=3, clients_per_round=1.0, local_steps=4, lr=0.05)
    gaps = []
    for lam in (0.0, 10.0):
        result, _ = _run(_algo("ditto", cfg, lam=lam))
        gaps.append(np.linalg.norm(result.store.export()["v"] - result.server["w"]))
    assert gaps[1] < 0.5 * gaps[0]


def test_fedrep_uploads_bodies_and_a_novel_party_moves_only_its_head():
    # Prepare
    algo, n_body = _algo("fedrep"), body_size(SPEC)
    novel_desc, x_shots, y_shots = _sines(3, 6, seed=5)

    # Execute
    result, uploads = _run(algo)
    start = algo.novel(result.server, SPEC)
    warm = torch.as_tensor(start.predict(novel_desc.numpy()))
    cfg = FinetuneConfig(steps=20, folds=0)
    tuned = finetune(warm, SPEC, x_shots, y_shots, _task_loss, novel_desc, cfg, start.constraint_for(warm))

    # Assert
    assert n_body == 16 and all(up.keys() == {"body"} and up["body"].shape[1] == n_body for up in uploads)
    assert result.costs.upload_bytes == sum(up["body"].nbytes for up in uploads)
    np.testing.assert_array_equal(result.server["w"][n_body:], INIT[n_body:])  # the server never saw a head
    assert result.store.export()["head"].shape[1] == SPEC.n_params - n_body
    torch.testing.assert_close(tuned[:, :n_body], warm[:, :n_body], rtol=0, atol=0)
    assert (tuned[:, n_body:] != warm[:, n_body:]).any(dim=1).all()


def test_fedrep_shared_heads_give_the_average_head():
    cfg = FederatedConfig(rounds=1, clients_per_round=1.0, local_steps=4, lr=0.01)
    result, uploads = _run(_algo("fedrep", cfg, share_heads=True))
    counts = _parties().counts.numpy().astype(np.float64)
    expected = (counts / counts.sum()) @ uploads[0]["head"].astype(np.float64)
    np.testing.assert_allclose(result.server["w"][body_size(SPEC) :], expected, rtol=1e-6)


def test_fedala_with_all_weights_one_on_all_layers_is_fedavg():
    ala, _ = _run(_algo("fedala", layers=SPEC.n_layers, weight_epochs=0, max_epochs=0))
    avg, _ = _run(_algo("fedavg"))
    np.testing.assert_array_equal(ala.server["w"], avg.server["w"])


def test_fedala_learns_weights_in_the_unit_interval_on_the_top_layer():
    cfg = FederatedConfig(rounds=4, clients_per_round=1.0, local_steps=4, lr=0.05)
    result, _ = _run(_algo("fedala", cfg, layers=1, weight_lr=10.0))
    weights = result.store.export()["weights"]
    assert weights.shape == (6, SPEC.n_params - SPEC.offsets[-1][0])
    assert weights.min() >= 0 and weights.max() <= 1 and weights.min() < 1


def _pfllib_ala(w, old, weights, x, y, d, order, b, eta, epochs, first, window=10, threshold=0.1):
    """PFLlib's ``ALA.adaptive_local_aggregation`` weight learning, written out on one flat model: minibatches of
    ``b`` rows of ``order`` in turn (the last holds the rest), W ← clip(W − η ∂L/∂θ ⊙ (w − θ_old), 0, 1); a first
    ALA until the std of the last ``window`` epoch-end losses is below ``threshold`` (at most ``epochs``)."""
    top = len(w) - len(weights)
    losses = []
    while True:
        for at in range(0, len(order), b):
            rows = torch.as_tensor(order[at : at + b])
            theta = torch.cat([w[:top], old[top:] + (w[top:] - old[top:]) * weights]).requires_grad_(True)
            loss = _task_loss(forward(theta[None], SPEC, x[rows][None]), y[rows][None], d[None]).sum()
            grad = torch.autograd.grad(loss, theta)[0][top:]
            weights = torch.clamp(weights - eta * grad * (w[top:] - old[top:]), 0, 1)
        losses.append(loss.item())
        if len(losses) >= epochs or (first and len(losses) > window and np.std(losses[-window:]) < threshold):
            return weights


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("first", [True, False])
def test_fedala_learns_w_as_pfllibs_ala(layers, first):
    # Prepare: every party has trained once (θ_old ≠ w); shares of int(0.8 n) rows (party 0: 9 real rows -> 7), in
    # minibatches of 4 (4 + 3; 4 + 4 + 1). layers 1 runs the head on features computed once, 2 the whole model.
    parties, b, eta = _parties(), 4, 0.5
    cfg = FederatedConfig(rounds=1, clients_per_round=1.0, local_epochs=1, batch_size=b, lr=0.01)
    algo = _algo("fedala", cfg, layers=layers, weight_lr=eta, max_epochs=25, weight_epochs=2)
    ids = np.arange(6)
    batch = parties.batch(ids, SPEC, cfg, SEED, 0)
    w = torch.as_tensor(INIT)
    g = torch.Generator().manual_seed(3)
    old = w + 0.3 * torch.randn(6, SPEC.n_params, generator=g)
    top = SPEC.offsets[-layers][0]
    weights = torch.rand(6, SPEC.n_params - top, generator=g)
    settled = torch.full((6, 1), 0.0 if first else 1.0)

    # Execute
    start, learned, flags = algo._adapted({"w": w}, {"theta": old, "weights": weights, "settled": settled}, batch)

    # Assert
    for i in ids:
        n_real = int(parties.counts[i])
        order = local_rng(SEED, i, 0).permutation(n_real)[: int(0.8 * n_real)]
        x, y, d = parties.x[i], parties.y[i], parties.descriptors[i]
        want = _pfllib_ala(w, old[i], weights[i], x, y, d, order, b, eta, 25 if first else 2, first)
        torch.testing.assert_close(learned[i], want, rtol=1e-4, atol=1e-5, msg=f"party {i}")
        torch.testing.assert_close(start[i, :top], w[:top], rtol=0, atol=0)
        torch.testing.assert_close(
            start[i, top:], w[top:] + (old[i, top:] - w[top:]) * (1 - want), rtol=1e-4, atol=1e-5
        )
    assert (flags == 1).all()
    assert not torch.equal(learned, weights)


def test_fedala_skips_ala_while_the_local_model_is_the_global_one():
    # Prepare: parties never trained (θ_old = w, W = 1), as in PFLlib's first round.
    parties = _parties()
    cfg = FederatedConfig(rounds=1, clients_per_round=1.0, local_epochs=1, batch_size=4, lr=0.01)
    algo = _algo("fedala", cfg)
    batch = parties.batch(np.arange(6), SPEC, cfg, SEED, 0)
    down = {"w": torch.as_tensor(INIT)}

    # Execute
    start, weights, settled = algo._adapted(down, algo.init_personal(down, batch), batch)

    # Assert: the start is w, W stays 1 and the first ALA is still to come.
    torch.testing.assert_close(start, down["w"].expand(6, -1), rtol=0, atol=0)
    assert (weights == 1).all() and (settled == 0).all()


def test_pfedhn_generates_the_spec_and_trains_its_encoder():
    # Prepare
    algo = _algo("pfedhn", embed=4, hidden=16)
    server0 = algo.init_server(SPEC, INIT, _parties().descriptors.numpy(), SEED)
    n_enc = encoder_size(2, 16, 4)

    # Execute
    result, _ = _run(algo, rounds=1)
    theta0 = algo.novel(server0, SPEC).predict(_parties().descriptors.numpy())

    # Assert: round 0's models sit near the common init (offsets well under each layer's init scale); one round
    # moves the encoder.
    assert theta0.shape == (6, SPEC.n_params) and theta0.dtype == np.float32
    assert (np.abs(theta0 - INIT) / output_scale(SPEC).numpy()).max() < 0.5
    assert not np.array_equal(result.server["phi"][:n_enc], server0["phi"][:n_enc])
    assert np.array_equal(result.server["mu"], server0["mu"])


def test_pfedhn_serves_a_784_100_10_mlp():
    spec = MLPSpec((784, 100, 10))
    algo = _algo("pfedhn")
    desc = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    server = algo.init_server(spec, np.zeros(spec.n_params, np.float32), desc, SEED)
    delta = np.random.default_rng(1).normal(size=(2, spec.n_params)).astype(np.float32)
    server = algo.aggregate(server, {"delta": delta, "descriptor": desc[:2]}, np.ones(2), np.arange(2))
    theta = algo.novel(server, spec).predict(desc)
    assert theta.shape == (5, 79_510) and theta.dtype == np.float32 and np.isfinite(theta).all()


@pytest.mark.parametrize(
    ("name", "settings", "key"),
    [
        ("per_fedavg", {"alpha": -1.0}, "federated.per_fedavg.alpha"),
        ("per_fedavg", {"beta": 0.0}, "federated.per_fedavg.beta"),
        ("per_fedavg", {"inner": "newton"}, "federated.per_fedavg.inner"),
        ("per_fedavg", {"passes": 0}, "federated.per_fedavg.passes"),
        ("per_fedavg", {"hessian_free": True, "inner": "sign"}, "federated.per_fedavg.hessian_free"),
        ("ditto", {"lam": -0.1}, "federated.ditto.lam"),
        ("ditto", {"personal_steps": -1}, "federated.ditto.personal_steps"),
        ("ditto", {"personal_steps": 2, "personal_epochs": 1}, "federated.ditto.personal_epochs"),
        ("fedrep", {"head_steps": -1}, "federated.fedrep.head_steps"),
        ("fedrep", {"head_epochs": -1}, "federated.fedrep.head_epochs"),
        ("fedala", {"share": 0.0}, "federated.fedala.share"),
        ("fedala", {"layers": 0}, "federated.fedala.layers"),
        ("pfedhn", {"embed": 0}, "federated.pfedhn.embed"),
        ("pfedhn", {"server_lr": 0.0}, "federated.pfedhn.server_lr"),
    ],
)
def test_bad_settings_name_their_key(name, settings, key):
    with pytest.raises(ValueError, match=key):
        ALGORITHMS[name].settings(**settings)


def test_fedala_refuses_more_layers_than_the_mlp_has():
    with pytest.raises(ValueError, match="federated.fedala.layers"):
        _run(_algo("fedala", layers=3))


def test_local_steps_are_counted_per_gradient_evaluation():
    counts = np.array([9, 12])
    assert list(_algo("fedavg").party_steps(counts)) == [4, 4]  # CFG: 4 steps a round
    assert list(_algo("per_fedavg").party_steps(counts)) == [8, 8]
    assert list(_algo("per_fedavg", hessian_free=True).party_steps(counts)) == [16, 16]
    assert list(_algo("ditto", personal_steps=3).party_steps(counts)) == [7, 7]
    assert list(_algo("fedrep", head_steps=5).party_steps(counts)) == [9, 9]
    assert list(_algo("fedala", weight_epochs=2).party_steps(counts)) == [6, 6]  # shares of 7, 9 rows: 1 W step
    epochs = FederatedConfig(local_epochs=2, batch_size=5)  # ⌈2 · 9 / 5⌉ = 4, ⌈2 · 12 / 5⌉ = 5 steps
    assert list(_algo("fedavg", epochs).party_steps(counts)) == [4, 5]
    assert list(_algo("per_fedavg", epochs).party_steps(counts)) == [2 * 2, 2 * 3]  # two minibatches a step
    assert list(_algo("ditto", epochs, personal_epochs=1).party_steps(counts)) == [4 + 2, 5 + 3]


# -- what a novel party receives -----------------------------------------------------------------------------------


def test_a_pulled_start_takes_gradient_steps_where_the_residual_gp_would_refit_its_read_out():
    # Prepare: Ditto's novel-party start and shots; a probe, so an unconstrained start takes the residual GP
    result, _ = _run(_algo("ditto"))
    desc, x, y = _sines(3, 10, seed=5)
    probe = torch.linspace(-4, 4, 64)[:, None]
    cfg = FinetuneConfig(steps=20, every=10, recipe="residual_gp", margin=0.0)
    tuned = {}

    # Execute
    for lam in (0.1, 10.0):
        start = _algo("ditto", lam=lam).novel(result.server, SPEC)
        warm = torch.as_tensor(start.predict(desc.numpy()))
        pull = start.constraint_for(warm)
        tuned[lam] = finetune(warm, SPEC, x, y, _task_loss, desc, cfg, pull, probe)
        steps = finetune(warm, SPEC, x, y, _task_loss, desc, cfg, pull)  # no probe: the gradient recipe
        np.testing.assert_array_equal(tuned[lam].numpy(), steps.numpy())
    free = finetune(warm, SPEC, x, y, _task_loss, desc, cfg, probe=probe)

    # Assert: the pull's λ shows in the result; without it the read-out refit runs
    assert not torch.equal(tuned[0.1], tuned[10.0]) and not torch.equal(free, tuned[10.0])


def test_fedrep_without_shared_heads_has_no_zero_shot_model_and_its_zero_shot_rows_are_blank():
    # Prepare
    result, _ = _run(_algo("fedrep"))
    starts = {
        "fedrep": _algo("fedrep").novel(result.server, SPEC),
        "fedavg_ft": _algo("fedavg_ft").novel({"w": INIT}, SPEC),
    }
    shared = _algo("fedrep", share_heads=True).novel(result.server, SPEC)
    cols = {"method": ["fedrep", "fedrep", "fedavg_ft"], "shots": [0, 10, 0], "value": [3.0, 0.2, 0.7]}

    # Execute
    blanked = no_zero_shot(cols, starts)

    # Assert
    assert not starts["fedrep"].zero_shot and shared.zero_shot
    assert np.isnan(blanked["value"][0]) and blanked["value"][1:] == [0.2, 0.7]
    restored = type(starts["fedrep"]).restore(starts["fedrep"].export())
    assert not restored.zero_shot


def test_pfedhn_counts_the_generated_model_per_sampled_party_in_its_download():
    algo = _algo("pfedhn", embed=4, hidden=16)
    result, _ = _run(algo)
    sampled = sum(len(sample(SEED, r, np.arange(6), CFG.clients_per_round)) for r in range(3))
    assert result.costs.download_bytes == sampled * 4 * SPEC.n_params
    assert algo.download_bytes(algo.broadcast(result.server)) == 4 * SPEC.n_params


def test_per_fedavg_takes_the_papers_sgd_inner_step_at_pfllibs_step_sizes_by_default():
    opts = _algo("per_fedavg").opts
    assert (opts.inner, opts.alpha, opts.beta) == ("sgd", CFG.lr, CFG.lr)
    assert _algo("per_fedavg", alpha=0.5).opts.alpha == 0.5
