"""The read-out recipe (fusion.adapt.readout): the last layer refit under a prior toward the start, chosen by k-fold
CV."""

import torch

from fusion.adapt import readout
from fusion.adapt.finetuning import choose_steps, finetune
from fusion.adapt.train_config import FinetuneConfig
from fusion.models.params import forward, init_params
from fusion.models.spec import MLPSpec, spec_for_family

SPEC = MLPSpec((4, 8, 3))


def _ce(pred, y, descriptors):
    return torch.nn.functional.cross_entropy(pred.transpose(1, 2), y, reduction="none").mean(1)


def _task(p: int, n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    flat = torch.stack([init_params(SPEC, gen) for _ in range(p)])
    x = torch.randn(p, n, 4, generator=gen)
    return flat, x, forward(flat, SPEC, x).argmax(-1), torch.zeros(p, 1)


def test_read_outs_round_trip_for_mlps_and_cnns():
    for spec in (SPEC, spec_for_family("cnn-s", 64, 5)):
        flat = torch.stack([init_params(spec, torch.Generator().manual_seed(i)) for i in range(3)])
        v = readout.read_outs(flat, spec)
        assert torch.equal(readout.with_read_outs(flat, spec, v), flat)
        x = torch.rand(3, 7, spec.fan_in)
        phi = torch.cat([readout.features(flat, spec, x), torch.ones(3, 7, 1)], -1)
        torch.testing.assert_close(phi @ v.transpose(1, 2), forward(flat, spec, x))


def test_a_strong_prior_stays_at_the_start_and_a_weak_one_fits_the_shots():
    flat, x, _, d = _task(4, 12)
    y = torch.randint(0, 3, (4, 12), generator=torch.Generator().manual_seed(1))  # labels the start does not know
    strong = readout.refit(flat, SPEC, x, y, _ce, d, torch.zeros(4, dtype=torch.long))
    weak = readout.refit(flat, SPEC, x, y, _ce, d, torch.full((4,), len(readout.PRIORS) - 1))
    start_loss = _ce(forward(flat, SPEC, x), y, d)
    assert (_ce(forward(weak, SPEC, x), y, d) < _ce(forward(strong, SPEC, x), y, d)).all()
    assert (_ce(forward(strong, SPEC, x), y, d) <= start_loss + 1e-6).all()
    n_body = SPEC.offsets[-1][0]
    assert torch.equal(weak[:, :n_body], flat[:, :n_body])  # only the read-out moves


def test_a_party_s_result_does_not_depend_on_its_batch():
    flat, x, _, d = _task(5, 10)
    y = torch.randint(0, 3, (5, 10), generator=torch.Generator().manual_seed(2))
    cfg = FinetuneConfig(steps=20, every=10, recipe="readout", margin=0.0, step_margin=0.0)
    both = finetune(flat, SPEC, x, y, _ce, d, cfg)
    one = finetune(flat[2:3], SPEC, x[2:3], y[2:3], _ce, d[2:3], cfg)
    torch.testing.assert_close(both[2:3], one, rtol=1e-4, atol=1e-5)


def test_steps_must_beat_the_chosen_read_out_not_only_the_start():
    # fold losses (F=5, P=1, C=3): 0 steps, 20 steps, 40 steps; the read-out's choice scores 0.5 in every fold
    twenty = [0.49, 0.51, 0.48, 0.52, 0.5]
    held = torch.tensor([[[1.0, t, 0.6]] for t in twenty])
    assert int(choose_steps(held, [0, 20, 40], 2.0)) == 20  # against the start, 20 steps clearly win
    assert int(choose_steps(held, [0, 20, 40], 2.0, base=torch.full((5, 1), 0.5))) == 0  # not against the read-out
    assert int(choose_steps(held, [0, 20, 40], 2.0, base=torch.full((5, 1), 0.9))) == 20


def test_folds_hold_out_whole_rounds_of_an_interleaved_draw():
    # 5 classes, shots interleaved (class i % 5): folds of i % 5 would each hold out one whole class
    spec, gen, d = MLPSpec((4, 8, 5)), torch.Generator().manual_seed(3), torch.zeros(1, 1)
    means = 3 * torch.randn(5, 4, generator=gen)

    def draw(n: int):
        y = torch.arange(n) % 5
        return (means[y] + 0.3 * torch.randn(n, 4, generator=gen))[None], y[None]

    start = init_params(spec, gen)[None]
    (x, y), (xt, yt) = draw(20), draw(200)
    cfg = FinetuneConfig(steps=60, every=20, recipe="steps", fold_group=5)
    tuned = finetune(start, spec, x, y, _ce, d, cfg)
    assert _ce(forward(tuned, spec, xt), yt, d) < 0.5 * _ce(forward(start, spec, xt), yt, d)
    one_each = finetune(start, spec, x[:, :5], y[:, :5], _ce, d, cfg)  # no fold keeps every class
    assert torch.equal(one_each, start)


def test_the_digits_scenario_groups_its_shots_by_its_digits():
    from scenarios.registry import build, make_options

    for k in (2, 5):
        resolved, _ = build("digits", make_options("digits", {"k": k})).shot_recipe(FinetuneConfig())
        assert resolved.fold_group == k and resolved.recipe == "readout"
    sine = build("sine-domains", make_options("sine-domains", {}))
    assert sine.shot_recipe(FinetuneConfig())[0].fold_group == 1


def test_stopping_a_training_early_keeps_its_schedule():
    from fusion.adapt.training import train

    flat, x, _, d = _task(3, 10)
    y = torch.randint(0, 3, (3, 10), generator=torch.Generator().manual_seed(3))
    loss = lambda pred, t: _ce(pred, t, d)  # noqa: E731
    cfg = FinetuneConfig(steps=40, lr=0.05)
    seen = {}
    train(flat, SPEC, x, y, loss, cfg, lambda step, w: seen.setdefault(step, w.clone()))
    stopped = train(flat, SPEC, x, y, loss, cfg, stop=15)
    assert torch.equal(stopped, seen[15])  # the first 15 steps of the 40-step (cosine) schedule
    assert not torch.equal(stopped, train(flat, SPEC, x, y, loss, FinetuneConfig(steps=15, lr=0.05)))


def test_the_read_out_recipe_compares_whole_model_steps_up_to_readout_steps_only():
    flat, x, _, d = _task(6, 30)
    teacher = _task(6, 30, seed=100)[0]
    x = x * 3
    y = forward(teacher, SPEC, x).argmax(-1)  # another net's labels: its body has to move to follow them
    free = dict(steps=100, every=10, lr=0.05, recipe="readout", margin=0.0, step_margin=0.0, folds=3)
    full = finetune(flat, SPEC, x, y, _ce, d, FinetuneConfig(**free, readout_steps=100))
    alone = finetune(flat, SPEC, x, y, _ce, d, FinetuneConfig(**free, readout_steps=0))
    n_body = SPEC.offsets[-1][0]
    assert (full[:, :n_body] != flat[:, :n_body]).any(1).sum() >= 2  # whole-model steps win for some parties
    assert torch.equal(alone[:, :n_body], flat[:, :n_body])  # the read-out alone: no body ever moves
