"""``fusion-cluster fuse``: existing state dicts in, warm starts out, equal to the in-process fusion."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from actors.party_shard import PartyShard
from cluster.cli import main
from cluster.config import resolve
from cluster.pipeline import run
from fusion.adapt.train_config import TrainConfig
from fusion.io import load_warm_starter
from fusion.models.params import forward, init_params
from fusion.models.spec import MLPSpec, spec_for_family
from fusion.models.state_dicts import state_from_flat
from fusion.strategies import STRATEGIES, FitContext, FusionConfig
from scenarios import build, make_options
from tests.test_cnn import sequential as cnn_sequential
from tests.test_state_dicts import sequential

N_PARTIES, HIDDEN, SEED = 50, 16, 4


@pytest.fixture(scope="module")
def pretrained():
    """Sine models pretrained in-process: ids 0..N-1, their (N, 2) descriptors and (N, n_params) params."""
    sc = build("sine", make_options("sine", {"hidden": [HIDDEN], "train_points": 40}))
    shard = PartyShard(0, sc, SEED, range(N_PARTIES), [], TrainConfig(150), TrainConfig(1))
    out = shard.pretrain()
    targets = np.stack([sc.party_descriptor(SEED, i) for i in range(100, 106)]).astype(np.float32)
    return sc.spec, out["party_id"], out["descriptor"], out["params"], targets


def write_inputs(folder, spec, ids, desc, params, targets, fmt: str = "csv"):
    (folder / "models").mkdir(parents=True)
    for pid, flat in zip(ids, params):
        torch.save(state_from_flat(flat, spec), folder / "models" / f"{pid}.pt")
    tables = {
        "descriptors": pa.table({"party_id": ids, "amplitude": desc[:, 0], "phase": desc[:, 1]}),
        "targets": pa.table(
            {"party_id": np.arange(100, 100 + len(targets)), "phase": targets[:, 1], "amplitude": targets[:, 0]}
        ),
    }
    paths = {}
    for name, table in tables.items():
        paths[name] = folder / f"{name}.{fmt}"
        if fmt == "csv":
            pacsv.write_csv(table, paths[name])
        else:
            pq.write_table(table, paths[name])
    return folder / "models", paths["descriptors"], paths["targets"]


def fuse_args(models, descriptors, targets, out, *extra):
    return [
        "fuse",
        "--models",
        str(models),
        "--descriptors",
        str(descriptors),
        "--targets",
        str(targets),
        "--out",
        str(out),
        *extra,
    ]


def test_fuse_round_trips_the_in_process_fusion(ray_session, tmp_path, pretrained):
    spec, ids, desc, params, targets = pretrained
    models, descriptors, target_file = write_inputs(tmp_path, spec, ids, desc, params, targets, fmt="parquet")
    out = tmp_path / "out"
    assert main(fuse_args(models, descriptors, target_file, out, "--seed", str(SEED), "--fusion", "gp")) == 0
    expected = STRATEGIES["gp"]().fit(params, desc, FitContext(spec, SEED, config=FusionConfig())).predict(targets)
    for j, pid in enumerate(range(100, 106)):
        net = sequential(*spec.widths)
        net.load_state_dict(torch.load(out / "warm_starts" / f"{pid}.pt", weights_only=True), strict=True)
        got = torch.cat([p.detach().reshape(-1) for p in net.state_dict().values()]).numpy()
        np.testing.assert_allclose(got, expected[j], rtol=1e-4, atol=1e-5)
    model, loaded_spec = load_warm_starter(out / "fusion_model.pt")
    assert loaded_spec == spec
    np.testing.assert_allclose(model.predict(targets), expected, rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in out.iterdir()) == ["fusion_model.pt", "warm_starts"]


def test_fuse_with_probe_gives_the_warm_starts_of_fusion_cluster_run(ray_session, tmp_path):
    """Export the models a ``fusion-cluster run`` pretrained (its checkpoint), fuse them with the run's strategy
    (gp_refit, its probe inputs in a .npy) and seed: the warm starts are the run's fusion model's."""
    options = {"name": "sine", "hidden": [HIDDEN], "train_points": 40}
    cfg = resolve(
        {
            "scenario": options,
            "parties": N_PARTIES,
            "test_parties": 4,
            "shots": [0],
            "seed": SEED,
            "methods": ["fusion"],
            "pretrain": {"steps": 150},
            "fusion": {"strategy": "gp_refit"},
            "party_actors": 2,
            "out": str(tmp_path / "run"),
        }
    )
    res = run(cfg, log=lambda _: None)
    saved = [np.load(f) for f in sorted((res.out / "checkpoint").glob("pretrained-*.npz"))]
    ids, desc, params = (np.concatenate([z[k] for z in saved]) for k in ("party_id", "descriptor", "params"))
    assert sorted(ids.tolist()) == list(range(N_PARTIES))
    sc = build("sine", make_options("sine", {k: v for k, v in options.items() if k != "name"}))
    targets = np.stack([sc.party_descriptor(SEED, i) for i in range(100, 106)]).astype(np.float32)
    models, descriptors, target_file = write_inputs(tmp_path / "in", sc.spec, ids, desc, params, targets)
    np.save(tmp_path / "probe.npy", sc.probe_inputs())
    out = tmp_path / "fused"
    argv = fuse_args(models, descriptors, target_file, out, "--seed", str(SEED), "--fusion", "gp_refit")
    assert main([*argv, "--probe", str(tmp_path / "probe.npy")]) == 0
    expected = load_warm_starter(res.out / "fusion_model.pt")[0].predict(targets)
    for j, pid in enumerate(range(100, 106)):
        state = torch.load(out / "warm_starts" / f"{pid}.pt", weights_only=True)
        got = torch.cat([t.reshape(-1) for t in state.values()]).numpy()
        np.testing.assert_allclose(got, expected[j], rtol=1e-3, atol=1e-4)
    x = torch.linspace(-5, 5, 50).reshape(-1, 1)
    net = sequential(*sc.spec.widths)
    net.load_state_dict(torch.load(out / "warm_starts" / "100.pt", weights_only=True))
    assert net(x).std() > 0.05  # a refitted sine, not a constant


def test_fuse_outputs_logits_fuses_classifiers_as_probabilities(ray_session, tmp_path):
    """Three [2-8-3] classifiers, ``--outputs logits``: the fusion model keeps the kind, and its warm start for a
    training party's descriptor gives (nearly) that party's class probabilities on the probe."""
    g = torch.Generator().manual_seed(0)
    nets = [sequential(2, 8, 3) for _ in range(3)]
    for net in nets:
        for p in net.parameters():
            p.data = torch.randn(p.shape, generator=g) * 2
    spec = MLPSpec((2, 8, 3))
    params = np.stack([torch.cat([p.detach().reshape(-1) for p in n.state_dict().values()]).numpy() for n in nets])
    desc = np.array([[0.1, 0.0], [0.5, 0.0], [0.9, 0.0]], np.float32)
    models, descriptors, targets = write_inputs(tmp_path, spec, np.arange(3), desc, params, desc[:1])
    probe = np.random.default_rng(1).normal(size=(64, 2)).astype(np.float32)
    np.save(tmp_path / "probe.npy", probe)
    extra = ("--fusion", "gp_refit", "--probe", str(tmp_path / "probe.npy"), "--outputs", "logits")
    assert main(fuse_args(models, descriptors, targets, tmp_path / "out", *extra)) == 0
    model, _ = load_warm_starter(tmp_path / "out" / "fusion_model.pt")
    assert model.output_kind == "logits"
    probs = lambda flat: torch.softmax(forward(torch.as_tensor(flat), spec, torch.as_tensor(probe)), -1)  # noqa: E731
    want, got = probs(params[:1]), probs(model.predict(desc[:1]))
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.8


def corrupt_nan(folder, spec):
    state = torch.load(folder / "models" / "5.pt", weights_only=True)
    state["2.weight"][0, 3] = float("nan")
    torch.save(state, folder / "models" / "5.pt")


def wrong_shape(folder, spec):
    torch.save(sequential(1, 8, 1).state_dict(), folder / "models" / "7.pt")


def not_a_state_dict(folder, spec):
    torch.save(sequential(1, HIDDEN, 1), folder / "models" / "3.pt")  # a pickled module


def orphan_file(folder, spec):
    torch.save(sequential(1, HIDDEN, 1).state_dict(), folder / "models" / "999.pt")


def missing_descriptor(folder, spec):
    text = (folder / "descriptors.csv").read_text().splitlines()
    cells = text[3].split(",")
    text[3] = ",".join([cells[0], "", cells[2]])
    (folder / "descriptors.csv").write_text("\n".join(text) + "\n")


@pytest.mark.parametrize(
    "break_it, extra, message",
    [
        (corrupt_nan, [], "5.pt: 2.weight contains NaN or Inf"),
        (wrong_shape, [], f"7.pt: architecture 1-8-1 does not match the expected 1-{HIDDEN}-1 (inferred from "),
        (
            wrong_shape,
            ["--arch", f"1-{HIDDEN}-1"],
            f"7.pt: architecture 1-8-1 does not match the expected 1-{HIDDEN}-1",
        ),
        (not_a_state_dict, [], "3.pt: not a state dict loadable with torch.load"),
        (orphan_file, [], "999.pt: no descriptor for party_id 999"),
        (missing_descriptor, [], "descriptors.csv: missing or non-finite descriptor 'amplitude' for party_id 2"),
    ],
)
def test_bad_inputs_exit_2_naming_the_file_and_write_nothing(
    ray_session, tmp_path, capsys, pretrained, break_it, extra, message
):
    spec, ids, desc, params, targets = pretrained
    models, descriptors, target_file = write_inputs(tmp_path, spec, ids[:12], desc[:12], params[:12], targets)
    break_it(tmp_path, spec)
    out = tmp_path / "out"
    assert main(fuse_args(models, descriptors, target_file, out, "--fusion", "gp", *extra)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert any(m in err for m in message.split("|")), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_fuse_takes_cnn_state_dicts_and_writes_warm_starts_of_either_family(ray_session, tmp_path):
    """Four cnn-s models on 8x8 images: ``gp`` warm starts load into the same Sequential; ``--target-arch mlp-16``
    (gp_refit, probe) writes state dicts of [64-16-10] MLPs."""
    spec = spec_for_family("cnn-s", 64, 10)
    g = torch.Generator().manual_seed(0)
    params = torch.stack([init_params(spec, g) for _ in range(4)]).numpy()
    desc = np.array([[0.1, 0.0], [0.4, 0.0], [0.6, 0.0], [0.9, 0.0]], np.float32)
    models, descriptors, targets = write_inputs(tmp_path, spec, np.arange(4), desc, params, desc[:2])
    assert main(fuse_args(models, descriptors, targets, tmp_path / "same", "--fusion", "gp")) == 0
    net = cnn_sequential(spec)
    net.load_state_dict(torch.load(tmp_path / "same" / "warm_starts" / "100.pt", weights_only=True))
    _, saved = load_warm_starter(tmp_path / "same" / "fusion_model.pt")
    assert saved == spec
    probe = np.random.default_rng(1).uniform(size=(32, 64)).astype(np.float32)
    np.save(tmp_path / "probe.npy", probe)
    extra = ["--fusion", "gp_refit", "--probe", str(tmp_path / "probe.npy"), "--outputs", "logits"]
    assert main(fuse_args(models, descriptors, targets, tmp_path / "mlp", *extra, "--target-arch", "mlp-16")) == 0
    mlp = sequential(64, 16, 10)
    mlp.load_state_dict(torch.load(tmp_path / "mlp" / "warm_starts" / "101.pt", weights_only=True))
    bad = ("--fusion", "gp", "--target-arch", "mlp-16")  # a parameter-space strategy makes no other family
    assert main(fuse_args(models, descriptors, targets, tmp_path / "bad", *bad)) == 2


def _cnn_with_batchnorm(spec):
    state = {}
    for key, value in cnn_sequential(spec).state_dict().items():
        state[key] = value
        if key == "0.bias":
            state.update({f"1.{k}": v for k, v in torch.nn.BatchNorm2d(16).state_dict().items()})
    return state


def _cnn_with_wrong_channels(spec):
    state = cnn_sequential(spec).state_dict()
    state["3.weight"] = torch.zeros(32, 8, 3, 3)  # the second conv reads 8 channels; the first gives 16
    return state


@pytest.mark.parametrize(
    "case, message",
    [
        ("batchnorm", "2.pt: key 1.running_mean (a BatchNorm layer's): unsupported layer type"),
        ("conv1d", "0.pt: 0.weight has shape (16, 1, 3), neither a Conv2d (out, in, k, k) nor a Linear"),
        ("channels", "2.pt: 3.weight reads 8 input channels but the conv before it (0.weight) has 16 output channels"),
        ("unknown_target", "--target-arch: unknown architecture family 'cnn-x'"),
        ("target_too_big", "--target-arch: cnn-m: 8x8 images shrink to nothing"),
    ],
)
def test_bad_cnn_inputs_exit_2_with_one_line_and_write_nothing(ray_session, tmp_path, capsys, case, message):
    spec = spec_for_family("cnn-s", 64, 10)
    params = torch.stack([init_params(spec, torch.Generator().manual_seed(i)) for i in range(4)]).numpy()
    desc = np.array([[0.1, 0.0], [0.4, 0.0], [0.6, 0.0], [0.9, 0.0]], np.float32)
    models, descriptors, targets = write_inputs(tmp_path, spec, np.arange(4), desc, params, desc[:2])
    extra = ["--fusion", "gp"]
    if case == "batchnorm":
        torch.save(_cnn_with_batchnorm(spec), models / "2.pt")
    elif case == "conv1d":
        torch.save({"0.weight": torch.zeros(16, 1, 3), "0.bias": torch.zeros(16)}, models / "0.pt")
    elif case == "channels":
        torch.save(_cnn_with_wrong_channels(spec), models / "2.pt")
    else:
        np.save(tmp_path / "probe.npy", np.zeros((8, 64), np.float32))
        family = "cnn-x" if case == "unknown_target" else "cnn-m"
        extra = ["--fusion", "gp_refit", "--probe", str(tmp_path / "probe.npy"), "--target-arch", family]
    out = tmp_path / "out"
    assert main(fuse_args(models, descriptors, targets, out, *extra)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
