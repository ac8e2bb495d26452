"""The digits scenario: K-subset tasks, disjoint test data, nested per-class shots, the mask in loss and metric."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.cli import main
from cluster.config import resolve
from cluster.pipeline import run
from scenarios import build, make_options
from scenarios.digit_sources import load

DATA = Path(os.environ.get("FUSION_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
HAS_MNIST = (DATA / "mnist" / "train-images-idx3-ubyte.gz").is_file()


def digits(prepare: tuple[int, int, int] | None = (0, 10, 5), **options):
    sc = build("digits", make_options("digits", options))
    if prepare is not None:
        sc.prepare(*prepare)
    return sc


def rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x}


@pytest.mark.parametrize("k", [2, 5])
def test_tasks_are_k_digit_masks_with_their_own_data(k):
    sc = digits(k=k, train_per_class=7, eval_per_class=4)
    assert sc.spec.widths == (64, 100, 10) and not sc.lower_is_better
    desc = sc.party_descriptor(0, 3)
    assert desc.shape == (10,) and desc.sum() == k and set(desc.tolist()) <= {0.0, 1.0}
    task_digits = set(np.flatnonzero(desc).tolist())
    x, y = sc.party_train_data(0, 3, desc)
    assert x.shape == (7 * k, 64) and y.dtype == np.int64 and set(y.tolist()) == task_digits
    assert np.bincount(y, minlength=10)[sorted(task_digits)].tolist() == [7] * k
    assert 0.0 <= x.min() and x.max() <= 1.0
    ex, ey = sc.party_eval_data(0, 3, desc)
    assert ex.shape == (4 * k, 64) and set(ey.tolist()) == task_digits
    data = load("sklearn")
    assert rows(ex) <= rows(data.test_x) and not rows(ex) & rows(data.train_x)  # held out, never trained on
    assert len(rows(x)) == len(x)  # no image twice in one party's data


def test_shots_are_per_class_and_nested():
    sc = digits(k=3, prepare=(1, 10, 5))
    desc = sc.party_descriptor(1, 12)
    sx, sy = sc.party_shot_data(1, 12, desc, 10)
    assert len(sx) == 30 and sc.shot_examples(4) == 12
    for m in (1, 4, 10):
        counts = np.bincount(sy[: sc.shot_examples(m)], minlength=10)
        assert sorted(counts[counts > 0].tolist()) == [m] * 3
    assert sc.max_shots == min(len(p) for p in load("sklearn").pools("train"))


@pytest.mark.parametrize("k", [2, 5])
def test_parties_data_are_disjoint_and_train_per_class_0_takes_the_whole_share(k):
    sc = digits(k=k, prepare=(4, 12, 6))  # train_per_class = 0 by default
    x = [sc.party_train_data(4, p, sc.party_descriptor(4, p))[0] for p in range(12)]
    seen = [rows(a) for a in x]
    assert sum(len(r) for r in seen) == len(set().union(*seen))  # no image in two parties' data
    users = np.bincount(np.concatenate([sc.digits_of(sc.party_descriptor(4, p)) for p in range(12)]), minlength=10)
    pools = load("sklearn").pools("train")
    per_class = sc.train_per_class
    assert per_class == min(len(pools[d]) // users[d] for d in range(10) if users[d])  # the whole smallest share
    assert all(len(a) == per_class * k for a in x)
    assert digits(k=k, prepare=(4, 12, 6)).train_per_class == per_class  # a function of the run
    assert digits(k=k, prepare=(5, 12, 6)).shares.blocks[0][0].tolist() != sc.shares.blocks[0][0].tolist()
    with pytest.raises(TypeError, match="disjoint shares"):
        sc.train_data(sc.party_descriptor(4, 0), np.random.default_rng(0))
    with pytest.raises(ValueError, match="not a training party"):
        sc.party_train_data(4, 12, sc.party_descriptor(4, 12))


def test_the_descriptor_restricts_loss_and_prediction():
    sc = digits(k=2)
    desc = torch.zeros(1, 10)
    desc[0, [3, 7]] = 1.0
    y = torch.tensor([[3, 7]])
    pred = torch.zeros(1, 2, 10)
    pred[0, 0, 3], pred[0, 1, 7] = 1.0, 1.0
    pred[0, :, 5] = 50.0  # a digit outside the task wins the plain argmax ...
    assert float(sc.metric(pred, y, desc)) == 1.0  # ... but the party only chooses among 3 and 7
    loss = sc.loss(pred, y, desc)
    pred[0, :, [0, 1, 2, 4, 5, 6, 8, 9]] = -20.0  # logits outside the task do not change the loss
    assert torch.allclose(sc.loss(pred, y, desc), loss)
    assert float(loss) == pytest.approx(-np.log(np.exp(1) / (np.exp(1) + 1)), rel=1e-5)
    wrong = torch.zeros(1, 2, 10)
    wrong[0, 0, 7], wrong[0, 1, 3] = 1.0, 1.0
    assert float(sc.metric(wrong, y, desc)) == 0.0


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="scenario.k"):
        make_options("digits", {"k": 6})
    with pytest.raises(ValueError, match="scenario.source"):
        make_options("digits", {"source": "emnist"})
    sc = digits(train_per_class=40, prepare=None)
    with pytest.raises(ValueError, match="train_per_class = 40 but with 10 training parties .* only [0-9]+ images"):
        sc.prepare(0, 10, 5)
    with pytest.raises(ValueError, match="needs scenario.data_dir"):
        digits(source="mnist", prepare=None).prepare(0, 10, 5)


def test_cli_mnist_without_files_exits_2(tmp_path, capsys):
    cfg = tmp_path / "d.toml"
    cfg.write_text('[scenario]\nname = "digits"\nsource = "mnist"\n')
    assert main(["run", str(cfg), "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no MNIST idx files" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST idx files not available (set FUSION_DATA_DIR)")
def test_mnist_source_reads_the_idx_files():
    sc = digits(source="mnist", data_dir=str(DATA), k=4, train_per_class=5, eval_per_class=5)
    assert sc.spec.widths == (784, 100, 10)
    data = sc.data
    assert data.train_x.shape == (60000, 784) and data.test_x.shape == (10000, 784)
    assert 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0
    x, y = sc.party_train_data(0, 1, sc.party_descriptor(0, 1))
    assert x.shape == (20, 784) and len(set(y.tolist())) == 4


def test_digits_end_to_end_on_ray(ray_session, tmp_path):
    cfg = resolve(
        {
            "scenario": {"name": "digits", "k": 3, "hidden": [16], "train_per_class": 10, "eval_per_class": 10},
            "parties": 8,
            "test_parties": 4,
            "shots": [0, 2],
            "seed": 2,
            "pretrain": {"steps": 60},
            "finetune": {"steps": 10},
            "fusion": {"gp": {"max_steps": 20, "inducing": 8}, "align_iters": 3},
            "party_actors": 2,
            "out": str(tmp_path / "run"),
        }
    )
    res = run(cfg, log=lambda _: None)
    means = {(r["method"], r["shots"]): r["mean"] for r in res.summary}
    assert len(means) == 10 and all(0.0 <= v <= 1.0 for v in means.values())
    assert means[("nearest_task", 0)] > 0.5  # a pretrained 3-digit classifier beats chance (1/3) on its task
