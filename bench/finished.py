"""A finished run's folder as the benches that re-examine it see it (no Ray): its config, scenario, checkpoint and
novel parties with their evaluation data, exactly as the run's evaluation drew them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cluster.checkpoint import Checkpoint
from cluster.config import RunConfig, load_toml, resolve
from scenarios.base import Scenario, party_descriptors
from scenarios.registry import build


@dataclass
class FinishedRun:
    cfg: RunConfig
    scenario: Scenario
    checkpoint: Checkpoint
    ids: np.ndarray  # the novel parties' ids (M,)
    desc: np.ndarray  # their descriptors (M, d)
    d: torch.Tensor  # the same as a tensor
    ex: torch.Tensor  # their evaluation inputs (M, N, in)
    ey: torch.Tensor  # and targets (M, N, ...)


def load_run(folder: Path) -> FinishedRun:
    """The run in ``folder`` (its ``config.toml`` and ``checkpoint/``)."""
    tree = load_toml(folder / "config.toml")
    tree["out"] = str(folder)
    cfg = resolve(tree)
    sc = build(cfg.scenario, cfg.scenario_options)
    sc.prepare(cfg.seed, cfg.parties, cfg.test_parties)
    ids = np.arange(cfg.parties, cfg.parties + cfg.test_parties)
    desc = party_descriptors(sc, cfg.seed, ids)
    evals = [sc.party_eval_data(cfg.seed, int(i), di) for i, di in zip(ids, desc)]
    ex, ey = (torch.as_tensor(np.stack([e[j] for e in evals])) for j in (0, 1))
    ckpt = Checkpoint(folder, sc, cfg.seed, cfg.parties)
    return FinishedRun(cfg, sc, ckpt, ids, desc, torch.as_tensor(desc), ex, ey)
