import numpy as np
import pytest
import torch

from scenarios import SCENARIOS, Stream, build, canonical_name, make_options, party_rng
from scenarios.sine import DOMAINS


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_contract(name):
    sc = build(name, make_options(name, {}))
    rng = party_rng(0, 7, Stream.DESCRIPTOR)
    desc = sc.descriptor(rng)
    x, y = sc.train_data(desc, party_rng(0, 7, Stream.DATA))
    assert x.shape[1] == sc.spec.widths[0] and len(x) == len(y)
    sx, sy = sc.shot_data(desc, 10, party_rng(0, 7, Stream.SHOTS))
    assert len(sx) == 10
    ex, ey = sc.eval_data(desc, party_rng(0, 7, Stream.EVAL))
    d = torch.tensor(desc[None], dtype=torch.float32)
    perfect = sc.metric(torch.tensor(ey[None]), torch.tensor(ey[None]), d)
    assert perfect.shape == (1,) and float(perfect) == 0.0
    assert float(sc.loss(torch.tensor(ey[None]) + 1, torch.tensor(ey[None]), d)) > 0


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
