"""The command line: ``fusion-cluster run SCENARIO_OR_TOML [flags]``, ``fusion-cluster fuse [flags]`` and
``fusion-cluster study STUDY.toml [flags]``; ``run`` and ``study`` take ``--check`` (validate, start nothing)."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from cluster.errors import ConfigError, StartError

EXIT_BAD_INPUT = 2


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers like 0,10,20, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise ConfigError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fusion-cluster", description="Model fusion for personalized learning on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="simulate parties, fuse their models, evaluate warm starts")
    r.add_argument(
        "target",
        metavar="SCENARIO_OR_TOML",
        nargs="?",
        help="a scenario name (sine, sine-uniform, digits, digits-split, movielens) or a TOML config",
    )
    r.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR from its config and checkpoint")
    r.add_argument("--parties", type=int, help="training parties that pretrain a model (default 200)")
    r.add_argument("--test-parties", type=int, help="unseen parties that receive warm starts (default 50)")
    r.add_argument("--shots", type=_int_list, help="comma list of fine-tuning shots, 0 = zero-shot (default 0,10,20)")
    r.add_argument("--seed", type=int, help="run seed; every party's randomness derives from (seed, party id)")
    r.add_argument("--methods", type=_name_list, help="comma list of methods to compare")
    r.add_argument("--fusion", dest="strategy", help="fusion strategy used by the 'fusion' method (default gp_refit)")
    r.add_argument("--party-actors", type=int, help="party-shard actors (default 0 = one per CPU of the cluster)")
    r.add_argument("--cpus-per-actor", type=float, help="CPUs reserved by each party shard (default 1)")
    r.add_argument("--gpus-per-actor", type=float, help="GPU share of each party shard, e.g. 0.25 (default 0)")
    r.add_argument("--address", help="Ray cluster address (else RAY_ADDRESS, else an embedded local Ray)")
    r.add_argument("--dashboard-host", help="interface of the embedded Ray dashboard (default 127.0.0.1)")
    r.add_argument("--out", help="output folder (default runs/<scenario>-s<seed>-<time>); must not exist or be empty")
    r.add_argument("--data-dir", help="data folder of scenarios that read files (sets scenario.data_dir)")
    r.add_argument(
        "--check",
        action="store_true",
        help="validate the config (and the scenario's data) without starting Ray or training: exit 0 or 2",
    )
    f = sub.add_parser("fuse", help="fuse existing models (state dicts) and write warm starts for target descriptors")
    f.add_argument(
        "--models",
        required=True,
        help="folder of <party_id>.pt state dicts of Sequential(Linear, ReLU, ...) or of a CNN (cnn-s, cnn-m)",
    )
    f.add_argument("--descriptors", required=True, help="CSV or Parquet: party_id plus descriptor columns")
    f.add_argument("--targets", required=True, help="CSV or Parquet: party_id plus the same descriptor columns")
    f.add_argument(
        "--arch", default="", help="architecture: 1-100-1, cnn-s or cnn-m (default: inferred from the state dicts)"
    )
    f.add_argument(
        "--target-arch",
        default="",
        help="family of the warm starts if not the models' own (mlp-<width>, cnn-s, cnn-m); needs gp_refit, --probe",
    )
    f.add_argument("--out", required=True, help="output folder; must not exist or be empty")
    f.add_argument("--seed", type=int, default=0, help="seed of the fusion fit (default 0)")
    f.add_argument(
        "--fusion", dest="strategy", default="", help="fusion strategy (default gp_refit, which needs --probe)"
    )
    f.add_argument("--probe", default="", help=".npy or CSV of unlabeled inputs (N, fan_in); needed by gp_refit")
    f.add_argument(
        "--outputs",
        default="values",
        help="values (regression, default) or logits (classifiers: refitting strategies such as gp_refit "
        "combine class probabilities)",
    )
    f.add_argument("--address", default="", help="Ray cluster address (else RAY_ADDRESS, else an embedded local Ray)")
    s = sub.add_parser("study", help="a grid of runs ([base] run keys x [grid] values) on one Ray connection")
    s.add_argument("study", metavar="STUDY.toml", help="a study file: [base] run keys and [grid] key = [values]")
    s.add_argument("--out", help="study folder (default studies/<file name>-<time>); must not exist or be empty")
    s.add_argument("--address", default="", help="Ray cluster address (else RAY_ADDRESS, else an embedded local Ray)")
    s.add_argument("--resume", action="store_true", help="continue the study in --out: finished points are skipped")
    s.add_argument("--data-dir", default="", help="data folder of scenarios that read files (every point's data_dir)")
    s.add_argument("--check", action="store_true", help="validate every point without starting Ray: exit 0 or 2")
    return p


_FLAG_KEYS = (
    "parties",
    "test_parties",
    "shots",
    "seed",
    "methods",
    "party_actors",
    "cpus_per_actor",
    "gpus_per_actor",
    "address",
    "dashboard_host",
    "out",
)


_RESUME_FLAGS = ("address", "dashboard_host")  # where to run may change on resume; what to run may not


def resume_config_tree(args: argparse.Namespace) -> dict[str, Any]:
    """``--resume DIR``: DIR's saved config, with only the flags that say where to run laid over it."""
    from cluster.checkpoint import resume_tree

    fixed = [k for k in (*_FLAG_KEYS, "strategy") if getattr(args, k) is not None and k not in _RESUME_FLAGS]
    if args.target is not None or fixed:
        given = ([args.target] if args.target else []) + ["--" + k.replace("_", "-") for k in fixed]
        raise ConfigError(f"--resume continues a run with its saved config; remove {', '.join(given)}")
    tree = resume_tree(args.resume)
    for key in _RESUME_FLAGS:
        if getattr(args, key) is not None:
            tree[key] = getattr(args, key)
    return tree


def config_tree(args: argparse.Namespace) -> dict[str, Any]:
    """The TOML tree (from the file, or just the scenario name) with the flags laid over it."""
    if args.resume is not None:
        return resume_config_tree(args)
    target = args.target
    if target is None:
        raise ConfigError("give a scenario name or a TOML config (or --resume DIR)")
    if target.endswith(".toml") or Path(target).is_file():
        from cluster.config import load_toml

        tree = load_toml(target)
    else:
        tree = {"scenario": target}
    for key in _FLAG_KEYS:
        value = getattr(args, key)
        if value is not None:
            tree[key] = value
    if args.strategy is not None:
        tree.setdefault("fusion", {})["strategy"] = args.strategy
    if args.data_dir is not None:
        scen = tree.get("scenario", "sine-domains")
        tree["scenario"] = {**({"name": scen} if isinstance(scen, str) else scen), "data_dir": args.data_dir}
    return tree


def check_run(args: argparse.Namespace) -> str:
    """``run ... --check``: the config and every check a run makes before Ray (:func:`cluster.pipeline.preflight`),
    nothing started; one line saying what the run would do."""
    from cluster.config import resolve
    from cluster.pipeline import preflight

    cfg, out, *_ = preflight(resolve(config_tree(args)), resume=args.resume is not None)
    source = args.target if args.resume is None else f"--resume {args.resume}"
    return (
        f"{source} is valid (nothing run): scenario {cfg.scenario}, {cfg.parties} training / {cfg.test_parties} test "
        f"parties, shots {','.join(map(str, cfg.shots))}, seed {cfg.seed}, methods {', '.join(cfg.methods)}; "
        f"it would write {out}/"
    )


def main(argv: list[str] | None = None) -> int:
    """The command line ``argv`` (default: this process's own, ``sys.argv[1:]``); returns the exit code. With the
    process's own command line a finished command ends the process at once (:func:`exit_now`)."""
    code = _command(argv)
    if argv is None:
        exit_now(code)
    return code


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` after running its exit handlers and flushing stdout and stderr, without the
    interpreter's teardown: freeing torch's, Ray's and matplotlib's modules one by one took 1.4 s after a run
    (docs/scaling.md). Nothing is lost: a command's outputs are renamed into place and its Ray stopped before it
    returns."""
    atexit._run_exitfuncs()  # noqa: SLF001 - the handlers a normal exit runs (Ray's, logging's)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _command(argv: list[str] | None) -> int:
    started = time.perf_counter()
    try:
        args = parser().parse_args(argv)
        if args.command == "fuse":
            from cluster.fuse import FuseConfig, fuse

            fuse(FuseConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FuseConfig)}))
            return 0
        if args.command == "study":
            from cluster.study import check_study, run_study

            if args.check:
                print(check_study(args.study, args.out, args.address, args.resume, args.data_dir))
            else:
                run_study(args.study, args.out, args.address, args.resume, data_dir=args.data_dir)
            return 0
        if args.check:
            print(check_run(args))
            return 0
        from cluster.config import resolve  # after parsing: --help and usage errors import nothing more

        cfg = resolve(config_tree(args))
        from cluster.pipeline import run  # Ray is imported only when a run starts

        run(cfg, resume=args.resume is not None, started=started)
    except ConfigError as exc:
        print(f"fusion-cluster: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StartError as exc:
        print(f"fusion-cluster: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fusion-cluster: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
