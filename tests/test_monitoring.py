"""What a person monitoring a run sees: the dashboard's token hint (never the token) and the Grafana board in
docs/grafana, which queries only series the run exports and has a panel for every metric."""

from __future__ import annotations

import json

import pytest

from actors import metrics
from bench.monitoring_check import BOARD, board_series
from cluster import runtime

FAKE_TOKEN = "0123456789abcdef0123456789abcdef"


def test_the_board_queries_only_series_of_actors_metrics_and_all_of_them():
    queried = board_series(BOARD)
    exported = metrics.prometheus_series()
    assert queried and not queried - exported.keys(), f"not exported by actors/metrics.py: {queried - exported.keys()}"
    assert {exported[s] for s in queried} == set(metrics.COUNTERS + metrics.GAUGES + metrics.HISTOGRAMS)


def test_the_board_has_a_run_variable_and_every_query_filters_on_it():
    board = json.loads(BOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert "ray_fusion_cluster_" in variables["run"]["query"]["query"]
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs and all('run=~"$run"' in e for e in exprs)


@pytest.mark.parametrize("env", [{}, {"RAY_AUTH_TOKEN_PATH": "/etc/ray/token"}, {"RAY_AUTH_TOKEN": FAKE_TOKEN}])
def test_the_dashboard_hint_names_the_command_and_the_prompt_but_never_the_token(monkeypatch, tmp_path, env):
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(FAKE_TOKEN)
    monkeypatch.setattr(runtime, "_token_auth_enabled", lambda: True)
    line = runtime.dashboard_login_hint()
    assert "`ray get-auth-token`" in line and "Authentication Token Required" in line
    assert FAKE_TOKEN not in line
    where = {"RAY_AUTH_TOKEN_PATH": "/etc/ray/token", "RAY_AUTH_TOKEN": "$RAY_AUTH_TOKEN"}
    assert where.get(next(iter(env), ""), "~/.ray/auth_token") in line


def test_no_hint_without_token_authentication(monkeypatch):
    monkeypatch.setattr(runtime, "_token_auth_enabled", lambda: False)
    assert runtime.dashboard_login_hint() is None
