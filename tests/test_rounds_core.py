"""The federated core in one process (no Ray): FedAvg's reductions, a hand-computed round, sampling, sharding."""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np
import pytest
import torch

from cluster.cli import EXIT_BAD_INPUT, main
from cluster.config import dumps_toml, resolve, to_dict
from cluster.rounds import common_init
from fusion.adapt import TrainConfig, relative_mse, train
from fusion.federated import ALGORITHMS, FederatedConfig
from fusion.federated.base import sample
from fusion.federated.rounds import Parties, run_rounds
from fusion.models.loss import RowLoss
from fusion.models.params import forward, init_params
from fusion.models.spec import MLPSpec
from scenarios import build, make_options, training_data
from tests.federated_toy import PersonalToy

SPEC = MLPSpec((1, 8, 1))


def toy_parties(n: int, points: int = 12, seed: int = 0) -> Parties:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, points, 1, generator=g) * 6 - 3
    amp = torch.rand(n, 1, 1, generator=g) + 0.5
    y = amp * torch.sin(x + torch.rand(n, 1, 1, generator=g))
    return Parties(
        np.arange(n, dtype=np.int64),
        x,
        y,
        torch.cat([amp[:, 0], amp[:, 0]], dim=1),
        torch.arange(10, 10 + 10 * n, 10),  # sample counts 10, 20, ...: the aggregation weights
        lambda d: relative_mse,
    )


def init() -> np.ndarray:
    return init_params(SPEC, torch.Generator().manual_seed(7)).numpy()


def fedavg(**cfg) -> object:
    """FedAvg on the toy parties: full batches (their counts are aggregation weights, not rows), 7 steps a round."""
    base = {"rounds": 3, "local_steps": 7, "clients_per_round": 1.0, "batch_size": 0, "lr": 0.01}
    return ALGORITHMS["fedavg"](FederatedConfig(**{**base, **cfg}))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fedavg_with_one_party_is_local_training_with_the_optimizer_fresh_each_round(optimizer):
    # Prepare
    parties, algo = toy_parties(1), fedavg(optimizer=optimizer)
    local = TrainConfig(steps=7, lr=0.01, decay=False, optimizer=optimizer)
    # Execute
    got = run_rounds(algo, SPEC, parties, init(), seed=1).server["w"]
    w = torch.as_tensor(init())[None]
    for _ in range(3):  # one train() per round: a fresh optimizer each time, as a party that downloads a model
        w = train(w, SPEC, parties.x, parties.y, relative_mse, local)
    at_once = train(
        torch.as_tensor(init())[None],
        SPEC,
        parties.x,
        parties.y,
        relative_mse,
        local.__class__(21, 0.01, False, optimizer),
    )
    # Assert: the average of one upload is that upload
    if optimizer == "sgd":  # the same arithmetic as train()'s; stateless: rounds of 7 steps are one run of 21
        np.testing.assert_array_equal(got, w[0].numpy())
        np.testing.assert_array_equal(got, at_once[0].numpy())
    else:  # Adam's moments and bias correction restart each round: not one run of 21 steps
        np.testing.assert_allclose(got, w[0].numpy(), rtol=1e-4, atol=1e-5)  # (train() may fuse its Adam step)
        assert not np.allclose(got, at_once[0].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimizer", [{"momentum": 0.9}, {"optimizer": "adam"}])
def test_a_persistent_optimizer_state_makes_rounds_of_one_party_one_run(optimizer):
    # Prepare: one party, full batches, every round; 3 rounds of 7 steps against 1 round of 21
    parties = toy_parties(1)
    runs = {
        (state, rounds): fedavg(rounds=rounds, local_steps=21 // rounds, optimizer_state=state, **optimizer)
        for state in ("fresh", "persistent")
        for rounds in (1, 3)
    }

    # Execute
    got = {key: run_rounds(algo, SPEC, parties, init(), seed=1).server["w"] for key, algo in runs.items()}

    # Assert: kept momentum (or Adam's moments and step count) continue across rounds; a fresh state does not
    np.testing.assert_array_equal(got["persistent", 3], got["persistent", 1])
    np.testing.assert_array_equal(got["fresh", 1], got["persistent", 1])
    assert not np.allclose(got["fresh", 3], got["fresh", 1], rtol=1e-5, atol=1e-6)


def test_a_fedavg_round_on_two_parties_is_the_sample_weighted_mean_of_their_local_models():
    parties, algo = toy_parties(2), fedavg(rounds=1)
    result = run_rounds(algo, SPEC, parties, init(), seed=1)
    local = TrainConfig(steps=7, lr=0.01, decay=False, optimizer="sgd")
    w0, w1 = (
        train(torch.as_tensor(init())[None], SPEC, parties.x[[i]], parties.y[[i]], relative_mse, local)[0]
        for i in range(2)
    )
    hand = ((10 * w0.double() + 20 * w1.double()) / 30).float().numpy()  # counts 10 and 20
    np.testing.assert_allclose(result.server["w"], hand, rtol=0, atol=1e-7)
    n_bytes = 4 * SPEC.n_params
    assert (result.costs.rounds, result.costs.upload_bytes, result.costs.download_bytes) == (
        1,
        2 * n_bytes,
        2 * n_bytes,
    )
    assert result.costs.party_steps == 2 * 7


def test_sampling_is_a_function_of_seed_and_round():
    ids = np.arange(40)
    assert np.array_equal(sample(3, 5, ids, 0.2), sample(3, 5, ids[::-1], 0.2))
    assert len(sample(3, 5, ids, 0.2)) == 8 and len(sample(3, 5, ids, 0.001)) == 1
    assert not np.array_equal(sample(3, 5, ids, 0.2), sample(3, 6, ids, 0.2))


@pytest.mark.parametrize(
    "algo",
    [
        fedavg(clients_per_round=0.5),
        fedavg(clients_per_round=0.5, momentum=0.9, optimizer_state="persistent"),
        PersonalToy(FederatedConfig(rounds=3, local_steps=5, clients_per_round=0.5, batch_size=0)),
    ],
)
def test_run_rounds_does_not_depend_on_the_sharding(algo):
    parties = toy_parties(7)
    one = run_rounds(algo, SPEC, parties, init(), seed=2, shards=1)
    three = run_rounds(algo, SPEC, parties, init(), seed=2, shards=3)
    np.testing.assert_array_equal(one.server["w"], three.server["w"])
    assert one.store.export().keys() == three.store.export().keys()
    for k, v in one.store.export().items():
        np.testing.assert_array_equal(v, three.store.export()[k])
    assert one.costs == three.costs


@pytest.mark.parametrize(
    "algo",
    [
        fedavg(clients_per_round=0.5, batch_size=3, local_steps=0),
        PersonalToy(FederatedConfig(rounds=3, local_steps=5, clients_per_round=0.5, batch_size=0)),
        ALGORITHMS["per_fedavg"](FederatedConfig(rounds=2, local_steps=4, clients_per_round=0.5, batch_size=2)),
    ],
)
def test_training_a_shards_parties_a_few_at_a_time_changes_nothing(algo, monkeypatch):
    """Large models train in chunks of parties (fusion.federated.local.party_chunks); two parties per chunk here."""
    parties = dataclasses.replace(toy_parties(7), counts=torch.tensor([12, 4, 9, 12, 6, 3, 11]))  # real rows
    whole = run_rounds(algo, SPEC, parties, init(), seed=2)
    monkeypatch.setattr("fusion.federated.local.CHUNK_BYTES", 2 * 4 * SPEC.n_params)
    chunked = run_rounds(algo, SPEC, parties, init(), seed=2)
    np.testing.assert_array_equal(whole.server["w"], chunked.server["w"])
    for k, v in whole.store.export().items():
        np.testing.assert_array_equal(v, chunked.store.export()[k])
    assert whole.costs == chunked.costs


def test_unknown_federated_keys_exit_2(tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text('methods = ["fedavg_ft"]\n[scenario]\nname = "sine"\n[federated.fedavg_ft]\nmu = 1\n')
    assert main(["run", str(toml), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert "federated.fedavg_ft.mu" in capsys.readouterr().err
    toml.write_text("[federated]\nrounds = 10\nlocal_step = 3\n")
    assert main(["run", str(toml), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert "federated.local_step" in capsys.readouterr().err


def test_federated_methods_are_refused_with_mixed_widths(tmp_path, capsys):
    toml = tmp_path / "w.toml"
    toml.write_text('methods = ["fedavg"]\nwidths = [10, 20]\n[scenario]\nname = "sine"\n')
    assert main(["run", str(toml), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert "fedavg" in capsys.readouterr().err


# -- the defaults a run gets ---------------------------------------------------------------------------------------


def test_fedavg_under_a_sine_runs_default_keys_ends_below_its_start_and_below_the_zero_model():
    # Prepare: eight sine-domains parties (seed 2) and the [federated] keys a sine run gets when it sets none
    cfg = resolve({"scenario": "sine", "methods": ["fedavg"]}).federated
    sc = build("sine-domains", make_options("sine-domains", {}))
    ids = np.arange(8)
    desc, x, y = (torch.as_tensor(a) for a in training_data(sc, 2, ids))
    parties = Parties(ids, x, y, desc, torch.full((8,), 100.0), lambda d: RowLoss(sc.loss, d, sc.loss_grad))
    init = common_init(sc, 2)

    def objective(w: np.ndarray) -> float:  # the training objective: the mean of the parties' losses
        with torch.no_grad():
            return float(sc.loss(forward(torch.as_tensor(w)[None].expand(8, -1), sc.spec, x), y, desc).mean())

    # Execute
    w = run_rounds(ALGORITHMS["fedavg"](cfg), sc.spec, parties, init, seed=2).server["w"]

    # Assert: after the default 1,000 rounds (2 parties a round) 0.481, below the common init's 4.69 and the zero
    # model's 0.503 (Adam restarted each round for 100 full-batch steps at lr 0.01 ended at 0.98 after 100 rounds)
    assert objective(w) < objective(init)
    assert objective(w) < objective(np.zeros_like(init))


def test_a_sine_run_takes_the_scenarios_federated_defaults_where_its_table_sets_none_and_saves_them():
    # Prepare
    methods = ["fedavg_ft", "per_fedavg", "ditto", "fedrep", "pfedhn"]
    raw = {"scenario": "sine", "methods": methods, "federated": {"lr": 1e-5, "ditto": {"lam": 0.5}}}

    # Execute
    cfg = resolve(raw).federated
    steps = resolve({**raw, "federated": {"local_steps": 5}}).federated
    saved = resolve(tomllib.loads(dumps_toml(to_dict(resolve(raw)))))

    # Assert: the scenario's rounds, momentum and Per-FedAvg α, the run's lr and λ, PFLlib's budget; every method's
    # settings resolved (values left to [federated] filled in) and written to config.toml, which reads back the same
    assert (cfg.rounds, cfg.lr, cfg.momentum, cfg.local_epochs, cfg.batch_size) == (1000, 1e-5, 0.9, 1, 10)
    assert cfg.optimizer == "sgd" and cfg.algorithms["ditto"].lam == 0.5
    assert (cfg.algorithms["per_fedavg"].alpha, cfg.algorithms["per_fedavg"].beta) == (1e-6, 1e-5)
    assert cfg.algorithms["pfedhn"].server_lr == 1e-3
    assert (cfg.algorithms["ditto"].personal_epochs, cfg.algorithms["ditto"].personal_steps) == (1, 0)
    assert (steps.local_epochs, steps.local_steps, steps.algorithms["fedrep"].head_steps) == (0, 5, 5)
    assert saved.federated == cfg
    assert resolve({"scenario": "digits-split", "methods": ["fedavg"]}).federated.lr == 0.005  # PFLlib's


def test_a_budget_of_both_epochs_and_steps_exits_2_naming_them(tmp_path, capsys):
    toml = tmp_path / "both.toml"
    toml.write_text('methods = ["fedavg"]\n[scenario]\nname = "sine"\n[federated]\nlocal_epochs = 2\nlocal_steps = 3\n')
    assert main(["run", str(toml), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "federated.local_epochs" in err and "federated.local_steps" in err
    toml.write_text('methods = ["fedavg"]\n[scenario]\nname = "sine"\n[federated]\nbatch_size = -1\n')
    assert main(["run", str(toml), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert "federated.batch_size" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["fedavg", "ditto", "fedrep", "fedala", "per_fedavg", "pfedhn"])
def test_participating_parties_are_scored_with_their_own_models_and_the_store_is_left_alone(name):
    from fusion.federated.rounds import participant_scores

    cfg = FederatedConfig(rounds=3, local_steps=4, clients_per_round=0.6, batch_size=0, lr=0.01)
    algo = ALGORITHMS[name](cfg, cfg.settings_of(name))
    parties = toy_parties(5)
    res = run_rounds(algo, SPEC, parties, init(), seed=1)
    before = {k: v.copy() for k, v in res.store.export().items()}
    held = toy_parties(5, points=20, seed=9)  # other rows of other tasks: only shapes matter here
    ids = np.arange(5)
    down = algo.broadcast(res.server)
    mse = lambda pred, y, d: relative_mse(pred, y)  # noqa: E731
    values, losses = participant_scores(
        algo, down, res.store, parties, ids, SPEC, cfg, 1, 3, lambda i: (held.x[i], held.y[i]), mse
    )
    assert values.shape == losses.shape == (5,) and np.isfinite(values).all() and np.isfinite(losses).all()
    after = res.store.export()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    w = torch.as_tensor(res.server["w"] if "w" in res.server else np.zeros(SPEC.n_params, np.float32))
    global_scores = relative_mse(forward(w.expand(5, -1), SPEC, held.x), held.y).numpy()
    if name == "fedavg":
        np.testing.assert_allclose(values, global_scores, rtol=1e-6)
    if name == "ditto":  # the personal models of parties sampled so far; the global one for the others
        kept = res.store.export()
        have = kept["party_id"]
        v = torch.as_tensor(kept["v"])
        own = relative_mse(forward(v, SPEC, held.x[have]), held.y[have]).numpy()
        np.testing.assert_allclose(values[have], own, rtol=1e-6)
        assert not np.allclose(values[have], global_scores[have])
        others = np.setdiff1d(ids, have)
        np.testing.assert_allclose(values[others], global_scores[others], rtol=1e-6)


def test_cnn_participants_are_scored_on_their_real_rows_whatever_the_padding():
    """CNN parties are scored a party at a time on its own rows: more padding in the stacks changes nothing."""
    from fusion.federated.rounds import participant_scores
    from fusion.models.spec import spec_for_family

    spec = spec_for_family("cnn-s", 64, 10)
    g = torch.Generator().manual_seed(3)
    counts = torch.tensor([5, 9, 3])

    def stacks(width: int, n_real) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(3, width, 64, generator=g)
        y = torch.randint(0, 10, (3, width), generator=g)
        for i, n in enumerate(n_real):
            x[i, n:], y[i, n:] = 0.0, -1  # padding after the real rows
        return x, y

    def ce(pred, y, d):
        real = (y >= 0).float()
        losses = torch.nn.functional.cross_entropy(pred.flatten(0, 1), y.clamp(min=0).flatten(), reduction="none")
        return (losses.view_as(real) * real).sum(1) / real.sum(1)

    def acc(pred, y, d):
        real = y >= 0
        return ((pred.argmax(-1) == y) & real).sum(1).float() / real.sum(1).float()

    x, y = stacks(9, counts.tolist())
    hx, hy = stacks(7, [7, 2, 4])
    cfg = FederatedConfig(rounds=1, local_steps=1, batch_size=0)
    algo = ALGORITHMS["fedavg"](cfg)
    w = init_params(spec, torch.Generator().manual_seed(1))
    down = {"w": w.numpy()}

    def score(pad: int) -> tuple[np.ndarray, np.ndarray]:
        widen = lambda t, fill: torch.cat([t, torch.full((3, pad, *t.shape[2:]), fill, dtype=t.dtype)], 1)  # noqa: E731
        parties = Parties(
            np.arange(3), widen(x, 0.0), widen(y, -1), torch.zeros(3, 2), counts, lambda d: lambda p, t: ce(p, t, d)
        )
        held = (widen(hx, 0.0), widen(hy, -1))
        return participant_scores(algo, down, None, parties, np.arange(3), spec, cfg, 0, 0, lambda i: held, acc)

    values, losses = score(0)
    padded_values, padded_losses = score(30)
    np.testing.assert_array_equal(values, padded_values)
    np.testing.assert_array_equal(losses, padded_losses)
    with torch.no_grad():
        for i, (n, m) in enumerate(zip(counts.tolist(), [7, 2, 4])):
            own = forward(w[None], spec, hx[i : i + 1, :m])
            assert values[i] == pytest.approx(acc(own, hy[i : i + 1, :m], None).item())
            assert losses[i] == pytest.approx(
                ce(forward(w[None], spec, x[i : i + 1, :n]), y[i : i + 1, :n], None).item()
            )
