"""Evaluation of novel parties (fusion/evaluate.py): warm starts, k-shot fine-tuning and scores, in process."""

from __future__ import annotations

import numpy as np
import torch

from fusion.adapt import FinetuneConfig
from fusion.evaluate import cold_starts, evaluate
from fusion.federated.fedavg import GlobalModel
from fusion.layout import ModelLayout, party_widths
from fusion.models.params import forward
from fusion.models.widths import at_width, embed
from fusion.strategies.average import Constant
from fusion.streams import Stream, party_torch_generator
from scenarios import build, make_options, model_layout

SC = build("sine", make_options("sine", {"hidden": [6], "train_points": 20, "eval_points": 30}))
FINETUNE = FinetuneConfig(steps=4, every=2)
IDS = np.arange(20, 26)


def _rows(scores) -> list[tuple]:
    return sorted(zip(scores.method, scores.shots, scores.party_id, scores.value))


def _constant(seed: int) -> Constant:
    return Constant(SC.init_params(torch.Generator().manual_seed(seed)).numpy())


def test_scores_do_not_depend_on_how_the_novel_parties_are_split():
    fitted, methods = {"average": _constant(0)}, ["average", "cold_start"]

    whole = evaluate(SC, model_layout(SC), 3, fitted, methods, [0, 2], IDS, FINETUNE)
    parts = [evaluate(SC, model_layout(SC), 3, fitted, methods, [0, 2], ids, FINETUNE) for ids in (IDS[:2], IDS[2:])]

    assert len(whole.value) == 2 * 2 * len(IDS)
    assert _rows(whole) == sorted(row for part in parts for row in _rows(part))


def test_a_zero_shot_score_is_the_metric_of_the_warm_start_on_the_partys_held_out_data():
    starter = _constant(1)

    scores = evaluate(SC, model_layout(SC), 3, {"average": starter}, ["average"], [0], IDS[:2], FINETUNE)

    for pid, value in zip(scores.party_id, scores.value):
        desc = SC.party_descriptor(3, pid)
        x, y = SC.party_eval_data(3, pid, desc)
        pred = forward(torch.as_tensor(starter.params[None]), SC.spec, torch.as_tensor(x[None]))
        want = SC.metric(pred, torch.as_tensor(y[None]), torch.as_tensor(desc[None])).item()
        assert np.isclose(value, want, rtol=1e-6)


def test_a_federated_start_used_as_it_is_scores_the_same_at_every_k_and_others_move():
    params = _constant(2).params
    fitted = {"fedavg": GlobalModel(params, finetune=False), "fedavg_ft": GlobalModel(params, finetune=True)}

    scores = evaluate(SC, model_layout(SC), 3, fitted, ["fedavg", "fedavg_ft"], [0, 4], IDS, FINETUNE)

    value = {(m, k, p): v for m, k, p, v in _rows(scores)}
    assert all(value[("fedavg", 0, p)] == value[("fedavg", 4, p)] for p in IDS)
    assert all(value[("fedavg", 0, p)] == value[("fedavg_ft", 0, p)] for p in IDS)
    assert any(value[("fedavg_ft", 0, p)] != value[("fedavg_ft", 4, p)] for p in IDS)


def test_cold_starts_of_mixed_widths_are_each_partys_own_init_embedded_at_the_widest():
    wide = at_width(SC.spec, 12)
    layout = ModelLayout(wide, widths=(6, 12))

    starts = cold_starts(SC, layout, 3, IDS, wide)

    for row, pid, w in zip(starts, IDS, party_widths(3, IDS, (6, 12))):
        own = at_width(SC.spec, w)
        init = SC.init_at(own, party_torch_generator(3, pid, Stream.COLD_START)).numpy()
        np.testing.assert_array_equal(row, embed(init[None], own, 12)[0])


def test_the_shown_parties_keep_their_zero_shot_models():
    scores = evaluate(SC, model_layout(SC), 3, {}, ["cold_start"], [0], IDS, FINETUNE, show=[21, 23])

    spec, ids, params = scores.shown["cold_start"]
    assert spec == SC.spec and ids.tolist() == [21, 23] and params.shape == (2, SC.spec.n_params)
    np.testing.assert_array_equal(params, cold_starts(SC, model_layout(SC), 3, np.array([21, 23]), SC.spec))


def test_participating_scores_the_warm_start_at_a_training_partys_own_descriptor_and_its_own_model_as_local():
    # Prepare: six training parties, each with a distinct model; nearest_task holds all six.
    from fusion.evaluate import LOCAL, participating
    from fusion.strategies.nearest_task import Lookup

    ids, seed = np.arange(6), 3
    own = np.stack([_constant(10 + int(i)).params for i in ids])
    desc = np.stack([SC.party_descriptor(seed, i) for i in ids])
    fitted = {"average": Constant(own.mean(0)), "nearest_task": Lookup(own, desc), "fedavg": GlobalModel(own[0])}

    # Execute
    scores = participating(SC, model_layout(SC), seed, fitted, ["average", "nearest_task", "fedavg"], ids, own)

    # Assert: every party scored by each one-shot method and `local` (not the federated start), at 0 shots, each
    # value the metric of the expected model on the party's own held-out rows; nearest_task never copies its own.
    def metric(params, pid):
        x, y = SC.party_eval_data(seed, pid, desc[pid])
        pred = forward(torch.as_tensor(params[None]), SC.spec, torch.as_tensor(x[None]))
        return SC.metric(pred, torch.as_tensor(y[None]), torch.as_tensor(desc[pid][None])).item()

    got = {(m, p): v for m, k, p, v in _rows(scores) if k == 0}
    assert len(got) == len(scores.value) == 3 * len(ids) and set(scores.shots) == {0}
    nearest = Lookup(own, desc).nearest(desc, other=True)
    assert (nearest != ids).all()
    for pid in ids:
        assert np.isclose(got[(LOCAL, pid)], metric(own[pid], pid), rtol=1e-6)
        assert np.isclose(got[("average", pid)], metric(own.mean(0), pid), rtol=1e-6)
        assert np.isclose(got[("nearest_task", pid)], metric(own[nearest[pid]], pid), rtol=1e-6)
        assert got[("nearest_task", pid)] != got[(LOCAL, pid)]


def test_participating_scores_cnn_parties_on_their_own_held_out_rows():
    # Prepare: digits-split on the sklearn digits with cnn-s parties (8x8 images)
    from fusion.evaluate import LOCAL, participating

    sc = build("digits-split", make_options("digits-split", {"archs": ["cnn-s"]}))
    sc.prepare(1, 6, 2)
    layout, ids = model_layout(sc), np.arange(4)
    own = np.stack([sc.init_params(torch.Generator().manual_seed(int(i))).numpy() for i in ids])

    # Execute
    scores = participating(sc, layout, 1, {"average": Constant(own.mean(0))}, ["average"], ids, own)

    # Assert: each party's value is its model's metric on its own held-out rows
    got = {(m, p): v for m, k, p, v in _rows(scores)}
    for pid in ids:
        d = sc.party_descriptor(1, pid)
        x, y = sc.party_eval_data(1, pid, d)
        pred = forward(torch.as_tensor(own[pid][None]), sc.spec, torch.as_tensor(x[None]))
        want = sc.metric(pred, torch.as_tensor(y[None]), torch.as_tensor(d[None])).item()
        assert np.isclose(got[(LOCAL, pid)], want, rtol=1e-5)
    assert len(got) == 2 * len(ids)
