import numpy as np
import pytest
import torch

from scenarios import SCENARIOS, Stream, build, canonical_name, make_options, party_rng
from scenarios.sine import DOMAINS


def perfect(sc, ey: np.ndarray) -> torch.Tensor:
    """The prediction a perfect model makes: the targets (regression) or confident one-hot logits (labels)."""
    y = torch.tensor(ey[None])
    if y.dtype == torch.int64:
        return torch.nn.functional.one_hot(y.clamp(min=0), sc.spec.widths[-1]).float() * 30.0  # -1: padding
    return y


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_contract(name, scenario_options):
    sc = build(name, make_options(name, scenario_options(name)))
    sc.prepare(0, 8, 4)
    desc = sc.party_descriptor(0, 7)
    x, y = sc.party_train_data(0, 7, desc)
    assert x.shape[1] == sc.spec.widths[0] and len(x) == len(y)
    assert y.dtype in (np.int64, np.float32)
    sx, sy = sc.party_shot_data(0, 9, sc.party_descriptor(0, 9), 3)
    assert len(sx) == len(sy) == sc.shot_examples(3)
    ex, ey = sc.party_eval_data(0, 9, sc.party_descriptor(0, 9))
    d = torch.tensor(sc.party_descriptor(0, 9)[None], dtype=torch.float32)
    best = sc.metric(perfect(sc, ey), torch.tensor(ey[None]), d)
    assert best.shape == (1,) and float(best) == (0.0 if sc.lower_is_better else 1.0)
    worse = perfect(sc, ey) + 1 if sc.lower_is_better else torch.zeros_like(perfect(sc, ey))  # off / undecided
    assert float(sc.loss(worse, torch.tensor(ey[None]), d)) > float(sc.loss(perfect(sc, ey), torch.tensor(ey[None]), d))


def test_party_streams_depend_only_on_seed_and_party():
    a = party_rng(3, 11, Stream.DATA).random(5)
    assert np.array_equal(a, party_rng(3, 11, Stream.DATA).random(5))
    assert not np.array_equal(a, party_rng(3, 12, Stream.DATA).random(5))
    assert not np.array_equal(a, party_rng(4, 11, Stream.DATA).random(5))
    assert not np.array_equal(a, party_rng(3, 11, Stream.INIT).random(5))


def test_sine_domains_follow_the_official_protocol():
    sc = build("sine", make_options("sine", {}))
    assert canonical_name("sine") == "sine-domains" and sc.spec.widths == (1, 100, 1)
    descs = np.stack([sc.descriptor(party_rng(0, i, Stream.DESCRIPTOR)) for i in range(500)])
    phases = {p for p, _, _ in DOMAINS}
    assert set(np.round(descs[:, 1], 4)) == phases
    for phase, low, high in DOMAINS:
        amp = descs[np.isclose(descs[:, 1], phase), 0]
        assert amp.min() >= low and amp.max() <= high
    x, _ = sc.train_data(descs[0], party_rng(0, 0, Stream.DATA))
    assert x.min() >= -10 and x.max() <= 10 and x.min() < -5
    ex, ey = sc.eval_data(descs[0], None)
    assert len(ex) == 200 and ex[0, 0] == -5 and ex[-1, 0] == 5
    np.testing.assert_allclose(ey[:, 0], descs[0, 0] * np.sin(ex[:, 0] + descs[0, 1]), rtol=1e-5, atol=1e-6)


def test_sine_uniform_is_mamls_family():
    sc = build("sine-uniform", make_options("sine-uniform", {}))
    descs = np.stack([sc.descriptor(party_rng(0, i, Stream.DESCRIPTOR)) for i in range(300)])
    assert descs[:, 0].min() >= 0.1 and descs[:, 0].max() <= 5 and descs[:, 1].max() <= np.pi
    x, _ = sc.train_data(descs[0], party_rng(0, 0, Stream.DATA))
    assert x.min() >= -5 and x.max() <= 5


def test_width_is_configurable_and_unknown_options_fail():
    assert build("sine", make_options("sine", {"hidden": [40, 40]})).spec.widths == (1, 40, 40, 1)
    with pytest.raises(ValueError, match="scenario.bogus"):
        make_options("sine", {"bogus": 1})
    with pytest.raises(ValueError, match="unknown scenario"):
        canonical_name("cosine")


def test_sine_parties_can_hold_different_amounts_of_data_and_noise():
    options = {"train_points": [10, 60], "noise": [0.0, 0.5]}
    sc = build("sine", make_options("sine", options))
    desc = np.array([1.5, 0.3])
    sizes, residuals = [], []
    for pid in range(40):
        x, y = sc.party_train_data(7, pid, desc)
        again = sc.party_train_data(7, pid, desc)
        np.testing.assert_array_equal(np.nan_to_num(y), np.nan_to_num(again[1]))  # from (seed, party id) alone
        real = ~np.isnan(y[:, 0])
        assert x.shape == (60, 1) and real[: real.sum()].all()  # the real points first, NaN padding after
        sizes.append(int(real.sum()))
        residuals.append(float(np.std(y[real, 0] - 1.5 * np.sin(x[real, 0] + 0.3))) / 1.5)
    assert min(sizes) >= 10 and max(sizes) <= 60 and len(set(sizes)) > 10
    assert min(residuals) < 0.1 and max(residuals) > 0.3  # the noise level differs by party
    # the loss on padded data is the loss on the party's real points
    x, y = sc.party_train_data(7, 0, desc)
    n = int((~np.isnan(y)).sum())
    pred = torch.randn(1, 60, 1)
    d = torch.tensor([desc], dtype=torch.float32)
    padded = sc.loss(pred, torch.as_tensor(y)[None], d)
    torch.testing.assert_close(padded, sc.loss(pred[:, :n], torch.as_tensor(y[:n])[None], d))


def test_sine_with_one_size_and_noise_draws_nothing_extra():
    fixed = build("sine", make_options("sine", {"train_points": 30, "noise": 0.1}))
    as_range = build("sine", make_options("sine", {"train_points": [30, 30], "noise": [0.1, 0.1]}))
    for pid in range(3):
        a, b = (
            fixed.party_train_data(2, pid, np.array([1.0, 0.5])),
            as_range.party_train_data(2, pid, np.array([1.0, 0.5])),
        )
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize(
    "bad", [{"train_points": [50, 10]}, {"noise": [0.1]}, {"train_points": [0, 5]}, {"noise": [-1, 0]}]
)
def test_sine_heterogeneity_options_are_checked(bad):
    with pytest.raises(ValueError, match="scenario"):
        make_options("sine", bad)
