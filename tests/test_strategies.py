"""Fusion strategies one by one: what each computes beyond the contract every strategy meets
(tests/test_strategy_contract.py)."""

import numpy as np
import pytest
import torch

from fusion.io import load_warm_starter, save_warm_starter
from fusion.layout import ModelLayout
from fusion.models.params import forward, init_params, permute
from fusion.models.spec import MLPSpec
from fusion.strategies import STRATEGIES, FitContext, FusionConfig, Strategy
from tests.builders import FAST, SPEC, outputs, permuted_copies, random_stack
from tests.builders import fit_context as ctx


def test_nearest_task_picks_the_closest_descriptor():
    models = np.arange(3 * SPEC.n_params, dtype=np.float32).reshape(3, -1)
    fitted = STRATEGIES["nearest_task"]().fit(models, np.array([[0.0, 0], [1, 0], [2, 0]]), ctx())
    np.testing.assert_array_equal(fitted.predict(np.array([[1.9, 0.1], [0.4, 0]])), models[[2, 0]])


def test_noalign_gp_does_not_recover_permuted_copies():
    """The ablation: the same GP without alignment averages unrelated units."""
    base = random_stack(SPEC, 1, seed=7)
    rng = np.random.default_rng(8)
    copies, desc = permuted_copies(base, SPEC, 8, rng), rng.uniform(size=(8, 2))
    aligned = STRATEGIES["gp"]().fit(copies, desc, ctx()).predict(desc[:1])
    unaligned = STRATEGIES["gp"](aligned=False).fit(copies, desc, ctx()).predict(desc[:1])
    truth = outputs(base)
    assert (outputs(unaligned) - truth).abs().mean() > 10 * (outputs(aligned) - truth).abs().mean()


def test_gp_refit_needs_probe_inputs():
    models, desc = random_stack(SPEC, 4), np.random.default_rng(0).uniform(size=(4, 2))
    with pytest.raises(ValueError, match="probe inputs"):
        STRATEGIES["gp_refit"]().fit(models, desc, FitContext(SPEC, config=FAST))


def test_gp_refit_on_logits_reproduces_class_probabilities_and_keeps_its_kind(tmp_path):
    spec = MLPSpec((2, 16, 3))
    model = random_stack(spec, 1, seed=6) * 3  # confident: probabilities far from uniform
    probe = np.random.default_rng(7).normal(size=(40, 2)).astype(np.float32)
    ctx = FitContext(spec, config=FAST, probe=probe, outputs="logits")
    fitted = STRATEGIES["gp_refit"]().fit(model, np.array([[0.2, 0.4]]), ctx)
    save_warm_starter(fitted, spec, tmp_path / "m.pt")
    loaded, _ = load_warm_starter(tmp_path / "m.pt")
    assert loaded.output_kind == "logits"
    probs = lambda params: torch.softmax(forward(torch.as_tensor(params), spec, torch.as_tensor(probe)), -1)  # noqa: E731
    want, got = probs(model), probs(loaded.predict(np.array([[0.2, 0.4]])))
    assert (got - want).abs().max() < 0.05
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.95


def test_fit_context_refuses_an_unknown_output_kind():
    with pytest.raises(ValueError, match="outputs must be one of"):
        FitContext(SPEC, outputs="probabilities")


def test_maml_meta_training_lowers_the_adapted_loss():
    import torch

    from fusion.strategies.maml import MAMLConfig, meta_train

    spec = MLPSpec((1, 16, 1))
    rng = np.random.default_rng(0)
    amp = rng.uniform(0.5, 2.0, 30)
    x = torch.tensor(rng.uniform(-3, 3, (30, 20, 1)), dtype=torch.float32)
    y = torch.tensor(amp[:, None, None], dtype=torch.float32) * torch.sin(x)
    d = torch.tensor(amp[:, None], dtype=torch.float32)
    loss = lambda pred, y, d: ((pred - y) ** 2).mean(dim=(1, 2))  # noqa: E731
    from fusion.models.params import init_params

    init = init_params(spec, torch.Generator().manual_seed(0))
    cfg = MAMLConfig(meta_steps=200, meta_batch=8, support=5, query=10, outer_lr=0.01)
    theta = meta_train(spec, x, y, d, loss, init, cfg, seed=0)
    before = loss(forward(init.expand(30, -1), spec, x), y, d).mean()
    after = loss(forward(theta.expand(30, -1), spec, x), y, d).mean()
    assert after < 0.5 * before


@pytest.mark.parametrize("options", [{}, {"train_points": [3, 20], "noise": [0.0, 0.2]}])
def test_maml_runs_on_the_sine_scenarios_own_loss(options):
    """The scenario's loss runs under vmap (no data-dependent branch), with and without padding."""
    from fusion.strategies.maml import MAMLConfig, meta_train
    from scenarios import build, make_options, training_data

    sc = build("sine", make_options("sine", {"hidden": [16], **options}))
    desc, x, y = training_data(sc, 0, np.arange(12))
    real = torch.as_tensor(sc.real_rows(y))
    x, y, d = torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(desc)
    init = sc.init_params(torch.Generator().manual_seed(0))
    cfg = MAMLConfig(meta_steps=30, meta_batch=4, support=2, query=1, outer_lr=0.01)
    theta = meta_train(sc.spec, x, y, d, sc.loss, init, cfg, seed=0, real=real)
    assert torch.isfinite(theta).all() and not torch.equal(theta, init)
    assert bool(real.all()) == (not options)


def test_maml_draws_real_rows_before_padding():
    from fusion.strategies.maml import first_points

    keys = torch.rand(50, 10, generator=torch.Generator().manual_seed(0))
    real = torch.arange(10)[None] < torch.randint(1, 11, (50, 1), generator=torch.Generator().manual_seed(1))
    pts = first_points(keys, real, 4)
    n_real = real.sum(1)
    for row, n in zip(pts, n_real):  # every real row is taken before any padding row
        assert (row[: min(4, int(n))] < n).all() and (row[int(n) :] >= n).all()
    assert torch.equal(first_points(keys, None, 4), torch.argsort(keys, dim=1)[:, :4])


def test_maml_needs_the_parties_data():
    with pytest.raises(ValueError, match="training parties' data"):
        STRATEGIES["maml"]().fit(random_stack(SPEC, 3), np.zeros((3, 2)), ctx())


def test_matched_average_of_noisy_permuted_copies_beats_the_plain_average():
    base = random_stack(SPEC, 1, seed=9)
    rng = np.random.default_rng(10)
    noisy = np.repeat(base, 8, 0) + rng.normal(scale=0.01, size=(8, SPEC.n_params)).astype(np.float32)
    copies = permute(noisy, SPEC, [np.stack([rng.permutation(12) for _ in range(8)])])
    desc = rng.uniform(size=(8, 2))
    truth = outputs(base)
    matched = STRATEGIES["matched_average"]().fit(copies, desc, ctx()).predict(desc[:1])
    plain = STRATEGIES["average"]().fit(copies, desc, ctx()).predict(desc[:1])
    assert (outputs(matched) - truth).abs().max() < 0.05
    assert (outputs(plain) - truth).abs().mean() > 10 * (outputs(matched) - truth).abs().mean()


def test_matched_gp_fits_models_of_different_widths_and_decodes_any_width():
    from fusion.strategies.matched_gp import fit_matched_gp

    specs = [MLPSpec((1, w, 1)) for w in (6, 12, 18, 6, 12, 18)]
    models = [random_stack(s, 1, seed=20 + i)[0] for i, s in enumerate(specs)]
    desc = np.random.default_rng(11).uniform(size=(6, 2))
    fitted = fit_matched_gp(models, specs, desc, width=12, gp=FAST.gp)
    assert fitted.predict(desc[:2]).shape == (2, SPEC.n_params)
    assert fitted.predict_width(desc[:2], 30).shape == (2, MLPSpec((1, 30, 1)).n_params)
    wide = fitted.predict_global(desc[:2])
    padded = fitted.predict_width(desc[:2], fitted.global_spec.widths[1] + 3)
    x = torch.linspace(-2, 2, 25)[:, None]
    torch.testing.assert_close(
        forward(torch.as_tensor(padded), MLPSpec((1, fitted.global_spec.widths[1] + 3, 1)), x),
        forward(torch.as_tensor(wide), fitted.global_spec, x),
    )


def test_gp_refit_shares_its_output_gp_between_aligned_and_unaligned_fits():
    from fusion.methods import strategy_for

    models, desc = random_stack(SPEC, 12, seed=4), np.random.default_rng(4).uniform(size=(12, 2))
    shared = ctx()
    strategy_for("fusion", FAST).fit(models, desc, shared)
    together = strategy_for("fusion_noalign", FAST).fit(models, desc, shared)
    alone = strategy_for("fusion_noalign", FAST).fit(models, desc, ctx())
    assert together.outputs is shared.cache["output_gp"][2]  # fitted once, used twice
    np.testing.assert_array_equal(together.predict(desc[:4]), alone.predict(desc[:4]))


def test_predict_all_refits_fusion_and_fusion_noalign_as_one_batch_with_their_own_results():
    from fusion.methods import strategy_for
    from fusion.warm_start import predict_all

    models, desc = random_stack(SPEC, 12, seed=5), np.random.default_rng(5).uniform(size=(12, 2))
    shared = ctx()
    fitted = [strategy_for(m, FAST).fit(models, desc, shared) for m in ("fusion", "fusion_noalign", "nearest_task")]

    together = predict_all(fitted, desc[:4])

    for starter, got in zip(fitted, together, strict=True):
        np.testing.assert_array_equal(got, starter.predict(desc[:4]))


def test_refit_from_closer_starts_each_party_from_the_start_nearer_the_predicted_function():
    """With no refit steps the warm start is the refit's start: a poor init loses to the party's nearest model
    (whose function the output GP predicts at its own descriptor) under ``refit_from = "closer"`` only."""
    from fusion.metamodels.gp_config import GPConfig
    from fusion.strategies.average import Constant
    from fusion.strategies.gp_refit import refit_warm_starter

    spec = MLPSpec((2, 8, 3))
    g = torch.Generator().manual_seed(3)
    models = torch.stack([init_params(spec, g) * 4 for _ in range(6)]).numpy()
    desc = np.linspace(0, 1, 12, dtype=np.float32).reshape(6, 2)
    probe = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    poor = Constant(np.zeros(spec.n_params, np.float32))
    for mode, expected in (("gp", np.zeros_like(models[:2])), ("closer", models[:2])):
        cfg = FusionConfig(gp=GPConfig(max_steps=50, inducing=6), refit_steps=0, refit_from=mode)
        ctx = FitContext(spec, config=cfg, probe=probe, outputs="logits")
        starter = refit_warm_starter(poor, models, desc, ctx)
        np.testing.assert_array_equal(starter.predict(desc[:2]), expected)
        np.testing.assert_array_equal(type(starter).restore(starter.export()).predict(desc[:2]), expected)
    with pytest.raises(ValueError, match="fusion.refit_from must be one of gp, closer"):
        FusionConfig(refit_from="nearest")


def test_a_strategy_is_refused_a_layout_its_flags_do_not_declare():
    layout = ModelLayout(SPEC, widths=(6, 12))
    widths = np.array([6, 12, 6, 12])
    wide_ctx = FitContext(SPEC, config=FAST, probe=ctx().probe, layout=layout, groups=layout.width_groups(widths))
    models, desc = random_stack(SPEC, 4), np.random.default_rng(0).uniform(size=(4, 2))

    with pytest.raises(ValueError, match="strategy gp cannot fuse models of mixed hidden widths"):
        STRATEGIES["gp"]().fit_layout(models, desc, wide_ctx)


def test_the_base_hands_each_layout_to_its_own_hook():
    calls = []

    class Recorder(Strategy):
        name = "recorder"
        mixed_widths = True

        def fit(self, models, descriptors, ctx):
            calls.append("fit")

        def fit_widths(self, models, descriptors, ctx):
            calls.append("fit_widths")

    layout = ModelLayout(SPEC, widths=(6, 12))
    wide_ctx = FitContext(SPEC, layout=layout, groups=layout.width_groups(np.array([6, 12])))
    models, desc = random_stack(SPEC, 2), np.zeros((2, 1))

    Recorder().fit_layout(models, desc, ctx())
    Recorder().fit_layout(models, desc, wide_ctx)

    assert calls == ["fit", "fit_widths"]


def test_a_strategy_that_declares_a_capability_must_override_its_hook():
    with pytest.raises(TypeError, match="sets mixed_families = True, so it must override fit_mixed"):

        class Careless(Strategy):
            name = "careless"
            mixed_families = True

            def fit(self, models, descriptors, ctx):
                return None
