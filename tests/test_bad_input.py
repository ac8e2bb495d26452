"""Malformed input through the CLI: each case gives one clear line on stderr, exit code 2, and no partial output.

Cases that need a cluster to decide (GPU shares) use the session's Ray; the others fail before Ray starts.
Resume cases fabricate a run folder (config.toml + checkpoint/) and check it is left exactly as it was.
"""

from __future__ import annotations

import io
import pickle
import time

import numpy as np
import pytest
import torch

from cluster.cli import main
from cluster.config import dumps_toml, resolve, to_dict
from fusion.strategies.average import Constant
from scenarios import SCENARIOS, Stream, build, make_options, party_rng
from scenarios.sine import SineDomains, SineOptions
from tests.test_state_dicts import sequential

SMALL = {
    "scenario": {"name": "sine", "hidden": [8], "train_points": 20},
    "parties": 6,
    "test_parties": 2,
    "shots": [0, 5],
    "seed": 1,
    "pretrain": {"steps": 5},
    "finetune": {"steps": 2},
    "methods": ["fusion", "average"],
    "fusion": {"gp": {"max_steps": 30, "inducing": 8}, "refit_steps": 20},
}


class _Exploit:
    """A pickle that would run code when unpickled: ``weights_only=True`` must refuse it."""

    def __reduce__(self):
        return (print, ("this must never be printed",))


def _run_folder(tmp_path, ids=(0, 1, 2), width=2, n_params=None, finished=False, fitted=None):
    """A fabricated interrupted run: config.toml, one pretraining checkpoint, optionally fitted models."""
    cfg = resolve({**SMALL, "out": str(tmp_path / "run")})
    folder = tmp_path / "run"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "config.toml").write_text(dumps_toml(to_dict(cfg)))
    sc = build("sine", make_options("sine", {"hidden": [8], "train_points": 20}))
    desc = np.stack([sc.descriptor(party_rng(1, i, Stream.DESCRIPTOR)) for i in ids]).astype(np.float32)
    desc = np.concatenate([desc, np.zeros((len(ids), width - 2), np.float32)], 1) if width > 2 else desc
    params = np.zeros((len(ids), n_params or sc.spec.n_params), np.float32)
    np.savez(
        folder / "checkpoint" / "pretrained-000000-000002.npz", party_id=np.array(ids), descriptor=desc, params=params
    )
    if finished:
        (folder / "results.parquet").write_bytes(b"x")
    for method, payload in (fitted or {}).items():
        (folder / "checkpoint" / f"fitted-{method}.pt").write_bytes(payload)
    return folder


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _good_fitted() -> bytes:
    return _torch_bytes(
        {"kind": "Constant", "widths": [1, 8, 1], "activation": "relu", "state": Constant(np.zeros(25)).export()}
    )


def _resume(**kw):
    def case(tmp_path):
        return ["run", "--resume", str(_run_folder(tmp_path, **kw))], tmp_path / "run"

    return case


def _flags(*flags):
    return lambda tmp_path: (["run", "sine", *flags, "--out", str(tmp_path / "out")], tmp_path / "out")


def _toml(text):
    def case(tmp_path):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        return ["run", str(path), "--out", str(tmp_path / "out")], tmp_path / "out"

    return case


def _existing_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    return ["run", "sine", "--out", str(out)], out


def _not_a_run(tmp_path):
    (tmp_path / "somewhere").mkdir()
    (tmp_path / "somewhere" / "notes.txt").write_text("mine")
    return ["run", "--resume", str(tmp_path / "somewhere")], tmp_path / "somewhere"


def _truncated_npz(tmp_path):
    folder = _run_folder(tmp_path)
    path = folder / "checkpoint" / "pretrained-000000-000002.npz"
    path.write_bytes(path.read_bytes()[:100])
    return ["run", "--resume", str(folder)], folder


def _resume_with_flag(tmp_path):
    return ["run", "--resume", str(_run_folder(tmp_path)), "--parties", "9"], tmp_path / "run"


def _capped_shots(tmp_path):
    return ["run", "sine-capped", "--shots", "0,50", "--out", str(tmp_path / "out")], tmp_path / "out"


def _fuse(strategy: str = "gp_refit", probe=None, probe_name: str = "probe.npy"):
    """``fusion-cluster fuse`` over three valid [2-8-1] models; ``probe``: bytes or an array written as the probe."""

    def case(tmp_path):
        (tmp_path / "models").mkdir()
        for pid in range(3):
            torch.save(sequential(2, 8, 1).state_dict(), tmp_path / "models" / f"{pid}.pt")
        (tmp_path / "parties.csv").write_text("party_id,a\n0,0.1\n1,0.5\n2,0.9\n")
        (tmp_path / "targets.csv").write_text("party_id,a\n7,0.3\n")
        argv = ["fuse", "--models", str(tmp_path / "models"), "--descriptors", str(tmp_path / "parties.csv")]
        argv += ["--targets", str(tmp_path / "targets.csv"), "--out", str(tmp_path / "out")]
        argv += ["--fusion", strategy] if strategy else []
        if probe is not None:
            path = tmp_path / probe_name
            if isinstance(probe, bytes):
                path.write_bytes(probe)
            elif probe_name.endswith(".npy"):
                np.save(path, probe, allow_pickle=True)
            argv += ["--probe", str(path)]
        return argv, tmp_path / "out"

    return case


CASES = {
    "broken TOML": (_toml("parties = [\n"), "not valid TOML"),
    "unknown key in TOML": (_toml("partys = 3\n"), "unknown key(s) partys"),
    "unknown table key": (_toml("[pretrain]\nepochs = 3\n"), "unknown key(s) pretrain.epochs"),
    "wrong type in TOML": (_toml('parties = "many"\n'), "parties must be a int"),
    "unknown flag": (_flags("--partys", "3"), "unrecognized arguments: --partys"),
    "unknown scenario": (lambda t: (["run", "cosine", "--out", str(t / "out")], t / "out"), "unknown scenario"),
    "zero parties": (_flags("--parties", "0"), "parties must be >= 2"),
    "negative parties": (_flags("--parties", "-4"), "parties must be >= 2"),
    "zero test parties": (_flags("--test-parties", "0"), "test_parties must be >= 1"),
    "negative party actors": (_flags("--party-actors", "-1"), "party_actors must be >= 1"),
    "zero cpus per actor": (_flags("--cpus-per-actor", "0"), "cpus_per_actor must be > 0"),
    "negative GPU share": (_flags("--gpus-per-actor", "-0.25"), "gpus_per_actor must be >= 0"),
    "GPU share larger than any node": (_flags("--gpus-per-actor", "2"), "largest node offers 1 GPUs"),
    "more actors than parties": (
        _flags("--parties", "4", "--test-parties", "2", "--party-actors", "7"),
        "more than the 6 parties",
    ),
    "negative shots": (_flags("--shots", "0,-5"), "shots must be distinct integers >= 0"),
    "shots not a list": (_flags("--shots", "0,ten"), "expected a comma list of integers"),
    "shots larger than the data": (_capped_shots, "shots=50 is more than the 20 examples"),
    "negative seed": (_flags("--seed", "-1"), "seed must be >= 0"),
    "unknown method": (_flags("--methods", "fusion,magic"), "unknown method(s) ['magic']"),
    "unknown fusion strategy": (_flags("--fusion", "magic"), "unknown fusion strategy 'magic'"),
    "unreachable --address": (_flags("--address", "127.0.0.1:9"), "cannot reach the Ray cluster at '127.0.0.1:9'"),
    "existing non-empty --out": (_existing_out, "already exists and is not empty"),
    "no scenario at all": (lambda t: (["run", "--out", str(t / "out")], t / "out"), "give a scenario name"),
    "resume a folder that is not a run": (_not_a_run, "not a fusion-cluster run folder"),
    "resume a finished run": (_resume(finished=True), "this run already finished"),
    "resume with a config flag": (_resume_with_flag, "remove --parties"),
    "resume: truncated parameters file": (_truncated_npz, "is corrupted or not a pretraining checkpoint"),
    "resume: descriptor width mismatch": (_resume(width=3), "descriptor width 3 does not match the scenario's 2"),
    "resume: parameter width mismatch": (_resume(n_params=7), "parameters of shape (3, 7); model 1-8-1 needs (3, 25)"),
    "resume: a party id out of range": (_resume(ids=(0, 1, 6)), "party ids must be integers in [0, 6)"),
    "resume: non-weights pickle": (
        _resume(fitted={"fusion": pickle.dumps(_Exploit()), "average": _good_fitted()}),
        "not a fusion-cluster model (refused): it holds pickled Python objects, not only weights",
    ),
    "resume: truncated state dict": (
        _resume(fitted={"fusion": _good_fitted()[:60], "average": _good_fitted()}),
        "not a fusion-cluster model (refused)",
    ),
    "resume: a state dict of another model": (
        _resume(fitted={"fusion": _torch_bytes({"weight": torch.zeros(3)}), "average": _good_fitted()}),
        "not a fusion-cluster model",
    ),
    "fuse: gp_refit without --probe": (_fuse(), "--fusion gp_refit needs probe inputs: pass --probe FILE"),
    "fuse: defaults without --probe": (_fuse(""), "fuse needs --probe FILE: unlabeled inputs"),
    "fuse: --probe with a strategy that does not use it": (
        _fuse("gp", probe=np.zeros((4, 2))),
        "--probe is only used by strategies that refit on inputs; --fusion gp does not",
    ),
    "fuse: --probe file missing": (
        lambda t: (_fuse(probe=np.zeros((4, 2)))(t)[0][:-1] + [str(t / "nope.npy")], t / "out"),
        "nope.npy: no such file",
    ),
    "fuse: probe of the wrong width": (_fuse(probe=np.zeros((4, 3))), "probe.npy: probe inputs must have shape (N, 2)"),
    "fuse: empty probe": (_fuse(probe=np.zeros((0, 2))), "probe.npy: probe inputs must have shape (N, 2) with N >= 1"),
    "fuse: probe with NaN": (_fuse(probe=np.array([[0.0, 1.0], [np.nan, 2.0]])), "probe.npy: probe inputs contain NaN"),
    "fuse: probe of pickled objects": (
        _fuse(probe=np.array([_Exploit(), _Exploit()], dtype=object)),
        "probe.npy: cannot read probe inputs",
    ),
    "fuse: probe not an array": (_fuse(probe=b"not numpy"), "probe.npy: cannot read probe inputs"),
    "fuse: probe CSV with text": (
        _fuse(probe=b"x0,x1\n0.5,abc\n", probe_name="probe.csv"),
        "probe.csv: cannot read probe inputs",
    ),
    "fuse: probe of another format": (_fuse(probe=b"0.5 0.1", probe_name="probe.txt"), "use .npy or .csv"),
    "fuse: --outputs logits with a strategy that does not refit": (
        lambda t: (_fuse("gp")(t)[0] + ["--outputs", "logits"], t / "out"),
        "--outputs logits is only used by strategies that refit on inputs; --fusion gp does not",
    ),
    "fuse: unknown --outputs": (
        lambda t: (_fuse(probe=np.zeros((4, 2)))(t)[0] + ["--outputs", "probabilities"], t / "out"),
        "--outputs must be one of values, logits, got 'probabilities'",
    ),
}


def _snapshot(folder):
    if not folder.exists():
        return None
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_error_exit_2_and_no_partial_output(name, ray_session, tmp_path, capsys, monkeypatch):
    make, message = CASES[name]
    monkeypatch.setitem(SCENARIOS, "sine-capped", (_CappedSine, SineOptions, {}))
    argv, out = make(tmp_path)
    before, listing = _snapshot(out), sorted(p.name for p in tmp_path.iterdir())
    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 20  # no hang (an unreachable address fails in ~0 s, a timeout in 5 s)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fusion-cluster: error: "), captured.err
    assert message in err[0] and "Traceback" not in captured.err + captured.out
    assert "this must never be printed" not in captured.out
    assert _snapshot(out) == before  # nothing written, nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


class _CappedSine(SineDomains):
    """A sine scenario that can give at most 20 labelled examples per task (like a small real data set)."""

    @property
    def max_shots(self) -> int:
        return 20


def test_the_cli_validates_without_importing_torch_ray_or_gpytorch():
    """``--help`` and config errors answer before the heavy modules load (they cost seconds to import)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cluster.cli import main\n"
        "from cluster.config import resolve\n"
        "resolve({'scenario': 'sine', 'parties': 30, 'methods': ['fusion', 'fedavg', 'maml', 'mfpl']})\n"
        "assert main(['run', 'sine', '--parties', '1']) == 2\n"
        "heavy = [m for m in ('torch', 'ray', 'gpytorch', 'scipy', 'pyarrow', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
