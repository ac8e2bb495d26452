"""The federated core in one process (no Ray): FedAvg's reductions, a hand-computed round, sampling, sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cluster.cli import EXIT_BAD_INPUT, main
from fusion.adapt.train_config import TrainConfig
from fusion.adapt.training import relative_mse, train
from fusion.federated import ALGORITHMS, FederatedConfig
from fusion.federated.base import sample
from fusion.federated.rounds import Parties, run_rounds
from fusion.models.params import init_params
from fusion.models.spec import MLPSpec
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
    return ALGORITHMS["fedavg"](FederatedConfig(**{"rounds": 3, "local_steps": 7, "clients_per_round": 1.0, **cfg}))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fedavg_with_one_party_is_local_training_with_the_optimizer_reset_each_round(optimizer):
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
    # Assert: bitwise equal (the average of one upload is that upload)
    np.testing.assert_array_equal(got, w[0].numpy())
    if optimizer == "sgd":  # stateless: rounds of 7 steps are one run of 21 steps
        np.testing.assert_array_equal(got, at_once[0].numpy())
    else:  # Adam's moments and bias correction restart each round: not one run of 21 steps
        assert not np.array_equal(got, at_once[0].numpy())


def test_a_fedavg_round_on_two_parties_is_the_sample_weighted_mean_of_their_local_models():
    parties, algo = toy_parties(2), fedavg(rounds=1)
    result = run_rounds(algo, SPEC, parties, init(), seed=1)
    local = TrainConfig(steps=7, lr=0.01, decay=False)
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
    [fedavg(clients_per_round=0.5), PersonalToy(FederatedConfig(rounds=3, local_steps=5, clients_per_round=0.5))],
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
