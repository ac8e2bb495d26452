import numpy as np

from fusion.metamodel import GPConfig, GPMetaModel


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


def test_single_task_comes_back_unchanged():
    y = np.arange(12, dtype=np.float32)[None]
    meta = GPMetaModel.fit(y, np.array([[0.3, 0.7]]), GPConfig(max_steps=5))
    np.testing.assert_allclose(meta.predict(np.array([[0.3, 0.7], [5.0, -1.0]])), np.repeat(y, 2, 0), atol=1e-5)
