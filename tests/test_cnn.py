"""CNN specs: layout = torch.nn.Sequential's state dict, batched forward/gradients = a loop of real modules,
hidden units = conv channels (permutations keep the function; alignment undoes them)."""

import numpy as np
import pytest
import torch

from fusion.adapt import TrainConfig, train
from fusion.matching import align
from fusion.models import RowLoss, conv, flatten, forward, layers, loss_and_grad, permute, unit_features
from fusion.models.spec import CNNSpec, MLPSpec, spec_for_family, spec_from_state, spec_state
from tests.builders import random_stack

SMALL = spec_for_family("cnn-s", 64, 10)  # 8x8 images: 8 -> 4 -> 2, 32 * 2 * 2 flat features


def sequential(spec: CNNSpec) -> torch.nn.Sequential:
    """The torch module a CNNSpec describes."""
    mods: list[torch.nn.Module] = []
    for c_in, c_out in zip((spec.channels, *spec.convs), spec.convs):
        mods += [
            torch.nn.Conv2d(c_in, c_out, spec.kernel, padding=spec.padding),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        ]
    mods.append(torch.nn.Flatten())
    dims = (spec.flat_features, *spec.fc, spec.n_out)
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        mods += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(dims) - 2 else [])
    return torch.nn.Sequential(*mods)


def load(net: torch.nn.Sequential, flat: torch.Tensor, spec: CNNSpec) -> torch.nn.Sequential:
    state = {k: t.reshape(v.shape) for (k, v), t in zip(net.state_dict().items(), _split(flat, spec))}
    net.load_state_dict(state)
    return net


def _split(flat: torch.Tensor, spec: CNNSpec) -> list[torch.Tensor]:
    return [t for w, b in layers(flat[None], spec) for t in (w[0], b[0])]


def images(p: int, n: int, spec, seed: int = 0) -> torch.Tensor:
    return torch.rand(p, n, spec.fan_in, generator=torch.Generator().manual_seed(seed))


def test_families_parse_to_the_documented_sizes():
    s, m = spec_for_family("cnn-s", 784, 10), spec_for_family("cnn-m", 784, 10)
    assert s.hidden == (16, 32, 128) and s.flat_features == 32 * 7 * 7
    assert m.hidden == (32, 64, 512) and m.flat_features == 1024  # PFLlib's FedAvgCNN on MNIST
    assert m.n_params == (25 * 32 + 32) + (32 * 25 * 64 + 64) + (1024 * 512 + 512) + (512 * 10 + 10)
    assert spec_for_family("mlp-100", 784, 10) == MLPSpec((784, 100, 10))
    assert spec_for_family("mlp-64-32", 64, 10) == MLPSpec((64, 64, 32, 10))
    assert str(s) == "cnn-s" and spec_for_family(MLPSpec((64, 100, 10)).family, 64, 10) == MLPSpec((64, 100, 10))
    for bad in ("cnn-x", "mlp-", "mlp-0", "resnet"):
        with pytest.raises(ValueError, match="unknown architecture family"):
            spec_for_family(bad, 784, 10)
    with pytest.raises(ValueError, match="shrink to nothing"):
        spec_for_family("cnn-m", 64, 10)  # 8x8 is too small for two 5x5 convs
    with pytest.raises(ValueError, match="square"):
        spec_for_family("cnn-s", 60, 10)


@pytest.mark.parametrize("family, side", [("cnn-s", 8), ("cnn-m", 28)])
def test_layout_is_the_sequential_state_dict(family, side):
    spec = spec_for_family(family, side * side, 10)
    net = sequential(spec)
    assert list(net.state_dict()) == spec.state_dict_keys()
    assert sum(t.numel() for t in net.state_dict().values()) == spec.n_params
    flat = torch.cat([t.reshape(-1) for t in net.state_dict().values()])[None]
    assert torch.equal(flatten(layers(flat, spec)), flat)
    assert spec_from_state(spec_state(spec)) == spec


def test_batched_forward_and_gradients_equal_a_loop_of_torch_modules():
    p, n = 4, 6
    flat = torch.as_tensor(random_stack(SMALL, p, seed=1))
    x, y = images(p, n, SMALL), torch.randint(0, 10, (p, n), generator=torch.Generator().manual_seed(2))
    ce = lambda pred, t: torch.nn.functional.cross_entropy(pred.transpose(1, 2), t, reduction="none").mean(1)  # noqa: E731
    losses, grad = loss_and_grad(flat, SMALL, x, y, ce)
    out = forward(flat, SMALL, x)
    for i in range(p):
        net = load(sequential(SMALL), flat[i], SMALL)
        want = net(x[i].reshape(n, 1, 8, 8))
        torch.testing.assert_close(out[i], want, rtol=1e-5, atol=1e-6)
        loss = torch.nn.functional.cross_entropy(want, y[i])
        loss.backward()
        torch.testing.assert_close(losses[i], loss.detach(), rtol=1e-5, atol=1e-6)
        want_grad = torch.cat([q.grad.reshape(-1) for q in net.parameters()])
        torch.testing.assert_close(grad[i], want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("group", [2, 3, 8])
def test_chunked_and_grouped_passes_equal_one_pass(monkeypatch, group):
    p, n = 3, 10
    flat, x = torch.as_tensor(random_stack(SMALL, p, seed=3)), images(p, n, SMALL, seed=4)
    y = torch.randn(p, n, 10)
    scale = torch.arange(1.0, p + 1)  # a loss holding a per-model tensor of its own: it must see the whole stack
    mse = lambda pred, t: ((pred - t) ** 2).mean(dim=(1, 2)) * scale  # noqa: E731
    whole, (l_whole, g_whole) = forward(flat, SMALL, x), loss_and_grad(flat, SMALL, x, y, mse)
    monkeypatch.setattr(conv, "PARTY_GROUP", group)
    torch.testing.assert_close(forward(flat, SMALL, x), whole, rtol=1e-5, atol=1e-6)
    l_group, g_group = loss_and_grad(flat, SMALL, x, y, mse)  # groups, one backward
    torch.testing.assert_close(l_group, l_whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_group, g_whole, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(conv, "CHUNK_FLOATS", 3 * conv._floats_per_example(SMALL) * min(group, p))  # 3 examples
    assert conv._chunk(SMALL, min(group, p), n) == 3
    torch.testing.assert_close(forward(flat, SMALL, x), whole, rtol=1e-5, atol=1e-6)
    l_chunk, g_chunk = loss_and_grad(flat, SMALL, x, y, mse)  # groups, chunks of examples, a backward each
    torch.testing.assert_close(l_chunk, l_whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_chunk, g_whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("fit", "slices"), [(1, [1, 1, 1]), (2, [2, 1]), (10, [3])])  # models a slice's graph fits
def test_a_row_loss_runs_slice_by_slice_and_equals_one_pass(monkeypatch, fit, slices):
    p, n = 3, 10
    flat, x = torch.as_tensor(random_stack(SMALL, p, seed=3)), images(p, n, SMALL, seed=4)
    y, scale = torch.randn(p, n, 10), torch.arange(1.0, p + 1)
    weighted = lambda pred, t, s: ((pred - t) ** 2).mean(dim=(1, 2)) * s  # noqa: E731
    l_whole, g_whole = loss_and_grad(flat, SMALL, x, y, lambda pred, t: weighted(pred, t, scale))
    monkeypatch.setattr(conv, "CHUNK_FLOATS", n * conv._floats_per_example(SMALL) * fit)
    seen = []
    spy = lambda pred, t, s: seen.append(len(pred)) or weighted(pred, t, s)  # noqa: E731
    l_rows, g_rows = loss_and_grad(flat, SMALL, x, y, RowLoss(spy, scale))
    assert seen == slices  # one loss call per slice: no second forward pass
    torch.testing.assert_close(l_rows, l_whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_rows, g_whole, rtol=1e-5, atol=1e-6)


def test_init_draws_within_torchs_default_bounds():
    flat = torch.as_tensor(random_stack(SMALL, 1))
    for (w, b), shape in zip(layers(flat, SMALL), SMALL.weight_shapes):
        bound = float(np.prod(shape[1:])) ** -0.5
        assert w.abs().max() <= bound and b.abs().max() <= bound and w.abs().max() > 0.9 * bound


def test_batched_training_trains_each_model_as_alone():
    flat, x = torch.as_tensor(random_stack(SMALL, 3, seed=5)), images(3, 8, SMALL, seed=6)
    y = torch.randint(0, 10, (3, 8), generator=torch.Generator().manual_seed(7))
    ce = lambda pred, t: torch.nn.functional.cross_entropy(pred.transpose(1, 2), t, reduction="none").mean(1)  # noqa: E731
    # SGD: the same updates up to float rounding; Adam: also, but it scales near-zero gradients' rounding up to
    # about lr-sized steps on a few weights.
    for cfg, atol in ((TrainConfig(steps=5, lr=0.1, optimizer="sgd"), 1e-6), (TrainConfig(steps=5, lr=0.01), 3e-4)):
        together = train(flat, SMALL, x, y, ce, cfg)
        alone = torch.cat([train(flat[i : i + 1], SMALL, x[i : i + 1], y[i : i + 1], ce, cfg) for i in range(3)])
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=atol)
    assert (ce(forward(together, SMALL, x), y) < ce(forward(flat, SMALL, x), y)).all()


def test_conv_units_are_channels_and_permuting_them_keeps_the_function():
    base = random_stack(SMALL, 1, seed=8)
    feats = unit_features(base, SMALL, 0)  # conv 1 -> conv 2: (1 * 3 * 3) + 1 + (32 * 3 * 3)
    assert feats.shape == (1, 16, 9 + 1 + 32 * 9)
    assert unit_features(base, SMALL, 1).shape == (1, 32, 16 * 9 + 1 + 128 * 4)  # conv -> flatten -> linear block
    assert unit_features(base, SMALL, 2).shape == (1, 128, 128 + 1 + 10)
    rng = np.random.default_rng(9)
    perms = [rng.permutation(h)[None] for h in SMALL.hidden]
    moved = permute(base, SMALL, perms)
    assert not np.allclose(moved, base)
    x = images(1, 5, SMALL)[0]
    torch.testing.assert_close(
        forward(torch.as_tensor(moved), SMALL, x), forward(torch.as_tensor(base), SMALL, x), rtol=1e-5, atol=1e-5
    )
    # a channel's kernel and bias move with it (its outgoing slices are also reordered by the next layer's perm)
    np.testing.assert_array_equal(unit_features(moved, SMALL, 0)[0, :, :10], feats[0][perms[0][0], :10])


def test_permuted_copies_of_one_cnn_align_back_to_it():
    base = random_stack(SMALL, 1, seed=10)
    rng = np.random.default_rng(11)
    perms = [np.stack([rng.permutation(h) for _ in range(5)]) for h in SMALL.hidden]
    copies = permute(np.repeat(base, 5, 0), SMALL, perms)
    aligned = align(copies, SMALL).aligned
    np.testing.assert_allclose(aligned, np.repeat(aligned[:1], 5, 0), atol=1e-6)  # one canonical order
    x = images(1, 5, SMALL)[0]
    torch.testing.assert_close(
        forward(torch.as_tensor(aligned), SMALL, x),
        forward(torch.as_tensor(np.repeat(base, 5, 0)), SMALL, x),
        rtol=1e-4,
        atol=1e-5,
    )


TINY = CNNSpec(8, (4, 6), 3, 1, (8,), 3, name="tiny")  # 8x8 images, 3 classes: fast fusion tests


@pytest.mark.parametrize("strategy", ["gp", "gp_refit", "matched_average", "nearest_task"])
def test_permuted_copies_of_one_cnn_fuse_to_it(strategy, tmp_path):
    from fusion.io import load_warm_starter, save_warm_starter
    from fusion.metamodels.gp_config import GPConfig
    from fusion.strategies import STRATEGIES, FitContext, FusionConfig

    base = random_stack(TINY, 1, seed=12) * 2
    rng = np.random.default_rng(13)
    perms = [np.stack([rng.permutation(h) for _ in range(6)]) for h in TINY.hidden]
    copies, desc = permute(np.repeat(base, 6, 0), TINY, perms), rng.uniform(size=(6, 2))
    probe = rng.uniform(size=(32, TINY.fan_in)).astype(np.float32)
    cfg = FusionConfig(gp=GPConfig(max_steps=30, inducing=8), refit_steps=200)
    ctx = FitContext(TINY, config=cfg, probe=probe, outputs="logits")
    fitted = STRATEGIES[strategy]().fit(copies, desc, ctx)
    save_warm_starter(fitted, TINY, tmp_path / "m.pt")
    loaded, spec = load_warm_starter(tmp_path / "m.pt")
    assert spec == TINY
    probs = lambda p: torch.softmax(forward(torch.as_tensor(p), TINY, torch.as_tensor(probe)), -1)  # noqa: E731
    got, want = probs(loaded.predict(desc[:2])), probs(np.repeat(base, 2, 0))
    assert (got - want).abs().max() < (0.05 if strategy == "gp_refit" else 1e-3)


@pytest.mark.parametrize("family, side", [("cnn-s", 28), ("cnn-m", 28), ("cnn-s", 8)])
def test_cnn_state_dicts_round_trip_with_the_architecture_inferred(family, side, tmp_path):
    from fusion.models.state_dicts import load_model_file, state_from_flat

    spec = spec_for_family(family, side * side, 10)
    net = sequential(spec)
    torch.save(net.state_dict(), tmp_path / "m.pt")
    flat, found = load_model_file(tmp_path / "m.pt")
    assert found == spec and str(found) == family
    again = sequential(spec)
    again.load_state_dict(state_from_flat(flat, spec), strict=True)
    x = torch.rand(3, 1, side, side)
    assert torch.equal(again(x), net(x))


def test_bad_cnn_state_dicts_are_refused_with_the_file_named(tmp_path):
    from fusion.models.state_dicts import load_model_file

    spec = spec_for_family("cnn-s", 784, 10)
    state = sequential(spec).state_dict()
    state["7.weight"] = torch.zeros(128, 1000)  # the first Linear does not read the conv stack's features
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt: keys and shapes .* are not those of"):
        load_model_file(tmp_path / "bad.pt")
    torch.save(sequential(spec_for_family("cnn-m", 784, 10)).state_dict(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"m.pt: architecture cnn-m does not match the expected cnn-s"):
        load_model_file(tmp_path / "m.pt", spec)


def test_gp_refit_makes_warm_starts_of_another_family_in_function_space(tmp_path):
    from fusion.io import load_warm_starter, save_warm_starter
    from fusion.layout import ModelLayout
    from fusion.metamodels.gp_config import GPConfig
    from fusion.strategies import STRATEGIES, FitContext, FusionConfig

    model = random_stack(TINY, 1, seed=14) * 3  # confident: probabilities far from uniform
    probe = np.random.default_rng(15).uniform(size=(32, TINY.fan_in)).astype(np.float32)
    target = spec_for_family("mlp-32", TINY.fan_in, TINY.fan_out)
    cfg = FusionConfig(gp=GPConfig(max_steps=30, inducing=4), refit_steps=400)
    ctx = FitContext(TINY, config=cfg, probe=probe, outputs="logits", layout=ModelLayout(TINY, target=target))
    fitted = STRATEGIES["gp_refit"]().fit_layout(model, np.array([[0.2, 0.4]]), ctx)
    save_warm_starter(fitted, target, tmp_path / "m.pt")
    loaded, spec = load_warm_starter(tmp_path / "m.pt")
    warm = loaded.predict(np.array([[0.2, 0.4]]))
    assert spec == target and warm.shape == (1, target.n_params)
    x = torch.as_tensor(probe)
    want = torch.softmax(forward(torch.as_tensor(model), TINY, x), -1)
    got = torch.softmax(forward(torch.as_tensor(warm), target, x), -1)
    assert (got - want).abs().max() < 0.1 and (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
    with pytest.raises(ValueError, match="cannot make warm starts of another architecture"):
        STRATEGIES["gp"]().fit_layout(model, np.array([[0.2, 0.4]]), ctx)


def test_fuse_arch_names_a_family_and_takes_the_image_size_from_the_files(tmp_path):
    from cluster.config import ConfigError
    from cluster.fuse import model_spec

    spec = spec_for_family("cnn-s", 784, 10)
    torch.save(sequential(spec).state_dict(), tmp_path / "0.pt")
    assert model_spec("cnn-s", tmp_path / "0.pt")[0] == spec
    assert model_spec("", tmp_path / "0.pt")[0] == spec
    with pytest.raises(ConfigError, match=r"0.pt: keys and shapes .* are not those of the cnn-m family"):
        model_spec("cnn-m", tmp_path / "0.pt")


def test_finetune_selects_steps_for_cnn_parties_as_for_mlps():
    from fusion.adapt.finetuning import finetune
    from fusion.adapt.train_config import FinetuneConfig

    flat, x = torch.as_tensor(random_stack(SMALL, 3, seed=16)), images(3, 6, SMALL, seed=17)
    y = torch.randint(0, 10, (3, 6), generator=torch.Generator().manual_seed(18))
    loss = lambda pred, t, d: torch.nn.functional.cross_entropy(pred.transpose(1, 2), t, reduction="none").mean(1)  # noqa: E731
    cfg = FinetuneConfig(steps=4, every=2, folds=2, lr=0.01, optimizer="sgd")
    together = finetune(flat, SMALL, x, y, loss, torch.zeros(3, 2), cfg)
    alone = finetune(flat[:1], SMALL, x[:1], y[:1], loss, torch.zeros(1, 2), cfg)
    assert together.shape == flat.shape
    torch.testing.assert_close(together[:1], alone, rtol=1e-4, atol=1e-6)
