import numpy as np
import pytest
import torch

from fusion.metamodels.gp import GPMetaModel, _CollapsedSGPR, _LogdetQuad
from fusion.metamodels.gp_config import GPConfig


def smooth_family(x: np.ndarray, dim: int = 40) -> np.ndarray:
    """A smooth map from 2-d descriptors to ``dim``-d parameter vectors."""
    basis = np.random.default_rng(0).normal(size=(4, dim))
    feats = np.stack([np.sin(x[:, 0]), np.cos(x[:, 1]), x[:, 0] * x[:, 1], np.ones(len(x))], axis=1)
    return feats @ basis


def test_gp_interpolates_a_smooth_family():
    rng = np.random.default_rng(1)
    x_train, x_test = rng.uniform(-2, 2, (150, 2)), rng.uniform(-1.5, 1.5, (30, 2))
    meta = GPMetaModel.fit(smooth_family(x_train), x_train, GPConfig(inducing=64))
    truth = smooth_family(x_test)
    err = np.linalg.norm(meta.predict(x_test) - truth) / np.linalg.norm(truth - truth.mean(0))
    assert err < 0.05
    assert meta.objective[-1] > meta.objective[0]  # the bound was actually optimized


def test_gp_state_round_trips():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (20, 2))
    meta = GPMetaModel.fit(smooth_family(x), x, GPConfig(max_steps=20))
    again = GPMetaModel(meta.state)
    np.testing.assert_array_equal(again.predict(x[:5]), meta.predict(x[:5]))


@pytest.mark.parametrize("kind", ["rbf", "rbf+linear"])
def test_bound_with_every_task_inducing_is_the_exact_marginal_likelihood(kind):
    """Titsias' bound is tight at Z = X: its trace term must use the kernel's own diagonal (not 1 for a linear part)."""
    rng = np.random.default_rng(3)
    x, y = torch.as_tensor(rng.normal(size=(25, 3))), torch.as_tensor(rng.normal(size=(25, 2)))
    model = _CollapsedSGPR(x, y, x, kind).double()
    scale, noise = model.scale_noise()
    k0 = model.kernel(x).to_dense().detach()
    exact = [
        torch.distributions.MultivariateNormal(torch.zeros(25, dtype=x.dtype), scale[c] * k0 + noise[c] * torch.eye(25))
        .log_prob(y[:, c])
        .item()
        / 25
        for c in range(2)
    ]
    np.testing.assert_allclose(model.bound().detach().numpy(), exact, rtol=1e-4)


def test_linear_part_extrapolates_a_linear_map(tmp_path):
    """A descriptor-to-model map that is linear: the RBF alone shrinks toward the mean away from the tasks."""
    rng = np.random.default_rng(4)
    a = rng.normal(size=(4, 6))
    x, x_far = rng.normal(size=(60, 4)), 2.5 * rng.normal(size=(20, 4))
    y = x @ a + 0.05 * rng.normal(size=(60, 6))
    err = {}
    for kind in ("rbf", "rbf+linear"):
        meta = GPMetaModel.fit(y, x, GPConfig(kernel=kind, inducing=32, max_steps=100))
        err[kind] = np.linalg.norm(meta.predict(x_far) - x_far @ a) / np.linalg.norm(x_far @ a)
        torch.save(meta.state, tmp_path / "meta.pt")
        again = GPMetaModel(torch.load(tmp_path / "meta.pt", weights_only=True))
        assert again.state["config"]["kernel"] == kind
        np.testing.assert_array_equal(again.predict(x_far), meta.predict(x_far))
    assert err["rbf+linear"] < 0.5 * err["rbf"]


def test_state_saved_without_a_kernel_key_loads_as_rbf():
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (20, 2))
    meta = GPMetaModel.fit(smooth_family(x), x, GPConfig(max_steps=20))
    state = {**meta.state, "config": {k: v for k, v in meta.state["config"].items() if k != "kernel"}}
    np.testing.assert_array_equal(GPMetaModel(state).predict(x[:5]), meta.predict(x[:5]))


def test_single_task_comes_back_unchanged():
    y = np.arange(12, dtype=np.float32)[None]
    meta = GPMetaModel.fit(y, np.array([[0.3, 0.7]]), GPConfig(max_steps=5))
    np.testing.assert_allclose(meta.predict(np.array([[0.3, 0.7], [5.0, -1.0]])), np.repeat(y, 2, 0), atol=1e-5)


def _logdet_quad_by_cholesky(k, r, v):
    b = torch.eye(len(k), dtype=k.dtype) + r[:, None, None] * k  # (e, m, m)
    chol = torch.linalg.cholesky(b)
    c = torch.linalg.solve_triangular(chol, v.T.unsqueeze(-1), upper=False).squeeze(-1)
    return 2 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1), (c**2).sum(-1)


def test_logdet_quad_and_its_gradient_equal_the_cholesky_route():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 3, dtype=torch.float64, generator=g)  # low rank: repeated zero eigenvalues
    k, r = a @ a.T, torch.rand(4, dtype=torch.float64, generator=g) + 0.1
    v = torch.randn(6, 4, dtype=torch.float64, generator=g)
    weights = torch.randn(2, 4, dtype=torch.float64, generator=g)  # an arbitrary combination of both outputs
    grads = []
    for fn in (_LogdetQuad.apply, _logdet_quad_by_cholesky):
        leaves = [t.clone().requires_grad_(True) for t in (k, r, v)]
        logdet, quad = fn(*leaves)
        total = (weights[0] * logdet + weights[1] * quad).sum()
        grads.append((logdet.detach(), quad.detach(), *torch.autograd.grad(total, leaves)))
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-10)
