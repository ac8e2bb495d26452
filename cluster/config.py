"""The run configuration: frozen dataclasses, read once from TOML and flags, validated at load.

Every error names the full dotted key (``pretrain.lr``, ``fusion.gp.inducing``), what is allowed and the value
given; :class:`ConfigError` is what the CLI turns into exit code 2. The sub-configs validate themselves without
knowing their table (``TrainConfig`` says ``lr must be > 0``); :func:`_build`, which knows the table it is
building, finds the key a refused value came from and makes the message name it in full (:func:`_keyed`).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError, StartError  # noqa: F401  (re-exported: the config's errors)
from fusion.adapt.train_config import FinetuneConfig, TrainConfig
from fusion.faults import FaultConfig
from fusion.federated import ALGORITHMS, FederatedConfig
from fusion.federated.base import with_defaults
from fusion.layout import ModelLayout
from fusion.metamodels.gp_config import GPConfig
from fusion.methods import (
    COLD_START,
    DEFAULT_METHODS,
    default_methods,
    is_federated,
    known_methods,
    strategy_for,
)
from fusion.strategies import FusionConfig
from fusion.strategies.base import settings_classes
from fusion.system import PartyClass, SystemConfig, check_classes
from scenarios import SCENARIOS, build, canonical_name, make_options, model_layout


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how the actors run."""

    address: str = ""  # "" -> RAY_ADDRESS, else an embedded local Ray
    party_actors: int = 0  # 0 -> one per CPU of the cluster (at cpus_per_actor each)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    dashboard_host: str = "127.0.0.1"
    include_dashboard: bool = True
    chunk_parties: int = 25  # parties per pretrain/evaluate call: the unit of progress, checkpoints and retries

    def __post_init__(self) -> None:
        if self.chunk_parties < 1:
            raise ConfigError(f"chunk_parties must be >= 1, got {self.chunk_parties}")
        if self.party_actors < 0:
            raise ConfigError(f"party_actors must be >= 1 (or 0 for one per CPU), got {self.party_actors}")
        if not self.cpus_per_actor > 0:
            raise ConfigError(f"cpus_per_actor must be > 0, got {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            raise ConfigError(f"gpus_per_actor must be >= 0, got {self.gpus_per_actor}")
        if self.gpus_per_actor > 1 and self.gpus_per_actor != int(self.gpus_per_actor):
            raise ConfigError(f"gpus_per_actor above 1 must be a whole number, got {self.gpus_per_actor}")


BANDS = ("sem", "std", "iqr")  # cluster.plots.BANDS (not imported here: plots imports matplotlib and torch)


@dataclass(frozen=True)
class ReportConfig:
    """``[report]``: how a run summarizes its parties. ``band`` of ``metric_vs_shots.png``: "sem" (the mean and its
    standard error), "std" (the mean ± the std over parties) or "iqr" (the median and the 25th-75th percentile).
    ``target``, a metric value: the summary gives each method's time to reach it on the simulated clock (at or below
    it for an error metric, at or above it for accuracy); None: no time-to-target. ``participating_oneshot``: in a
    run with rounds methods, also score the one-shot methods and ``local`` on the training parties' held-out rows
    (each one-shot method makes a warm start per training party: for a refitting strategy a refit each)."""

    band: str = "sem"
    target: float | None = None
    participating_oneshot: bool = True

    def __post_init__(self) -> None:
        if self.band not in BANDS:
            raise ConfigError(f"band must be one of {', '.join(BANDS)}, got {self.band!r}")
        if self.target is not None and (isinstance(self.target, bool) or not isinstance(self.target, (int, float))):
            raise ValueError(f"target must be a number (a metric value), got {self.target!r}")
        if self.target is not None:
            object.__setattr__(self, "target", float(self.target))


@dataclass(frozen=True)
class RunConfig:
    scenario: str = "sine-domains"
    scenario_options: Any = None  # the scenario's own options dataclass
    parties: int = 200
    test_parties: int = 50
    shots: tuple[int, ...] = (0, 10, 20)
    seed: int = 0
    methods: tuple[str, ...] = DEFAULT_METHODS
    out: str = ""  # "" -> runs/<scenario>-<time>
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000, lr=0.01))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)  # test/demo fault injection, off by default
    party_classes: tuple[PartyClass, ...] = ()  # system heterogeneity (fusion/system.py); () = one class
    system: SystemConfig = field(default_factory=SystemConfig)
    widths: tuple[int, ...] = ()  # mixed hidden widths: each party's drawn from (seed, id); () = the scenario's
    federated: FederatedConfig = field(default_factory=FederatedConfig)  # rounds of the federated methods
    report: ReportConfig = field(default_factory=ReportConfig)  # figures' bands, time-to-target

    def __post_init__(self) -> None:
        if self.parties < 2:
            raise ConfigError(f"parties must be >= 2 (fusion needs several models), got {self.parties}")
        rounds_only = bool(self.methods) and all(is_federated(m) for m in self.methods)
        if self.test_parties < (0 if rounds_only else 1):
            raise ConfigError(
                f"test_parties must be >= 1 (>= 0 when every method is a rounds method, scored on the "
                f"participating parties), got {self.test_parties}"
            )
        if not self.shots or any(k < 0 for k in self.shots) or len(set(self.shots)) != len(self.shots):
            raise ConfigError(f"shots must be distinct integers >= 0, got {list(self.shots)}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods must be a non-empty list without repeats, got {list(self.methods)}")
        unknown = [m for m in self.methods if m not in known_methods()]
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; known: {', '.join(known_methods())}")
        for method in self.methods:
            try:
                strategy_for(method, self.fusion)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.cluster.party_actors > self.parties + self.test_parties:
            raise ConfigError(
                f"party_actors={self.cluster.party_actors} is more than the {self.parties + self.test_parties} parties"
            )
        if any(p >= self.parties for p in self.faults.nan_parties):
            raise ConfigError(f"faults.nan_parties must be training party ids < {self.parties}")
        try:
            check_classes(self.party_classes)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.party_classes and self.cluster.party_actors:
            raise ConfigError("party_actors cannot be combined with [[party_classes]]: set actors per class instead")
        self._check_widths()
        classifiers = [m for m in self.methods if is_federated(m) and ALGORITHMS[m].classification]
        kind = SCENARIOS[canonical_name(self.scenario)][0].outputs
        if classifiers and kind != "logits":
            raise ConfigError(
                f"method {classifiers[0]} needs a classification scenario over all outputs (digits-split); "
                f"scenario {self.scenario} has outputs {kind!r}"
            )
        if self.finetune.recipe == "residual_gp" and not SCENARIOS[canonical_name(self.scenario)][0].residual_shots:
            raise ConfigError(
                f'finetune.recipe = "residual_gp" needs a regression scenario with a probe (sine-domains, '
                f'sine-uniform); scenario {self.scenario} does not support it: use "steps" or "auto"'
            )
        self._check_layout()
        if self.system != SystemConfig() and not self.party_classes:
            raise ConfigError("[system] needs [[party_classes]] (speed factors and drop probabilities live there)")
        self._check_round_clock()

    def _check_round_clock(self) -> None:
        """The keys only the rounds' simulated clock uses (fusion.system.RoundClock) are refused in a run without a
        rounds method, not silently ignored."""
        if any(is_federated(m) for m in self.methods):
            return
        unused = [
            f"system.{k}"
            for k, default in (
                ("round_deadline", 0.0),
                ("straggler", "drop"),
                ("overselect", 1.0),
                ("availability", ""),
            )
            if getattr(self.system, k) != default
        ]
        unused += [f"party_classes[{c.name!r}].online" for c in self.party_classes if c.online != 1.0]
        if unused:
            raise ConfigError(
                f"{', '.join(unused)}: only the rounds methods' clock uses these keys, and methods = "
                f"{list(self.methods)} has none; leave them out"
            )

    def _check_widths(self) -> None:
        if not self.widths:
            return
        if any(w < 1 for w in self.widths) or len(set(self.widths)) != len(self.widths):
            raise ConfigError(f"widths must be distinct hidden widths >= 1, got {list(self.widths)}")
        hidden = getattr(self.scenario_options, "hidden", None)
        if hidden is not None and len(hidden) != 1:
            raise ConfigError(f"widths needs single-hidden-layer nets, but scenario.hidden = {list(hidden)}")

    def _check_layout(self) -> None:
        """Every method but cold start supports what the run's population layout (:class:`fusion.layout.ModelLayout`:
        mixed widths, mixed families, a target family) needs of it, by its capability flags."""
        options = self.scenario_options if self.scenario_options is not None else make_options(self.scenario, {})
        try:
            layout = model_layout(build(self.scenario, options), self.widths)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for flag in layout.needs:
            lacking = [m for m in self.methods if m != COLD_START and not getattr(self._capabilities(m), flag, False)]
            if lacking:
                raise ConfigError(self._refusal(flag, lacking, layout))

    def _capabilities(self, method: str):
        """What declares ``method``'s capability flags: its federated algorithm or fusion strategy."""
        return ALGORITHMS[method] if is_federated(method) else strategy_for(method, self.fusion)

    def _refusal(self, flag: str, lacking: list[str], layout: ModelLayout) -> str:
        if flag == "mixed_widths":
            return f"method(s) {lacking} do not support mixed widths (widths = {list(self.widths)})"
        if flag == "mixed_families":
            names = [f.family for f in layout.families]
            return (
                f"method {lacking[0]} cannot handle parties of mixed architecture families (scenario.archs = {names}); "
                "drop it from methods"
            )
        own = " and ".join(repr(f.family) for f in layout.families or (layout.spec,))
        return (
            f"method(s) {lacking} cannot make warm starts of scenario.target_arch = {layout.target.family!r} from "
            f"models of {own}; methods = {list(self.methods)}"
        )


# TOML layout: top-level keys, and tables whose keys map onto a sub-config.
_TOP = {"parties", "test_parties", "shots", "seed", "methods", "out", "widths"}
_CLUSTER = {f.name for f in fields(ClusterConfig)}
_TABLES = {
    "pretrain": TrainConfig,
    "finetune": FinetuneConfig,
    "faults": FaultConfig,
    "system": SystemConfig,
    "report": ReportConfig,
}
_FEDERATED = {f.name for f in fields(FederatedConfig)} - {"algorithms"}  # plus one sub-table per algorithm


def _typed(key: str, value: Any, kind: type) -> Any:
    """Check a scalar's type (ints where ints are wanted; bools are not ints)."""
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(f"{key} must be a {kind.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str, base: Any | None = None) -> Any:
    allowed = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    base = base if base is not None else cls()
    kwargs = {}
    for key, value in values.items():
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key} must be a table")
            kwargs[key] = _build(type(current), value, f"{prefix}{key}.", current)
        elif isinstance(value, list) and isinstance(current, (int, float)) and "tuple[" in str(allowed[key].type):
            # a number or a [lo, hi] range (e.g. scenario.train_points): each element typed like the default
            kwargs[key] = tuple(_typed(f"{prefix}{key}[{i}]", v, type(current)) for i, v in enumerate(value))
        elif isinstance(current, (bool, int, float, str)):
            kwargs[key] = _typed(prefix + key, value, type(current))
        else:
            kwargs[key] = value
    try:
        return dataclasses.replace(base, **kwargs)
    except (ValueError, TypeError) as exc:
        key = _culprit(base, kwargs, str(exc))
        if key is None:  # only a combination of values is refused: the message is the table's
            raise ConfigError(_in_table(str(exc), prefix)) from None
        raise ConfigError(_keyed(str(exc), prefix, key, kwargs[key])) from None


def _culprit(base: Any, kwargs: dict[str, Any], message: str) -> str | None:
    """The key of ``kwargs`` whose value alone makes ``base`` refuse with ``message`` (else the first key whose value
    alone is refused; None when only a combination is)."""
    refused = []
    for key, value in kwargs.items():
        try:
            dataclasses.replace(base, **{key: value})
        except (ValueError, TypeError) as exc:
            if str(exc) == message:
                return key
            refused.append(key)
    return refused[0] if refused else None


# the leading key path of a message: "lr", "fusion.gp.inducing", "party_classes['a'].cpus"; group 1 its last name
_LEAD = re.compile(r"(?:[A-Za-z_]\w*(?:\[[^\]]*\])?\.)*([A-Za-z_]\w*)(?![\w.\[])")


def _shown(value: Any) -> str:
    try:
        return _toml_value(value)
    except TypeError:
        return repr(value)


def _mentions(message: str, value: Any) -> bool:
    """Whether ``message`` shows ``value`` (a list: each of its items; a number: after a "got", not in a bound)."""
    if isinstance(value, (list, tuple)) and value:
        return all(_mentions(message, v) for v in value)
    if isinstance(value, (bool, int, float)):
        message = message.partition(" got ")[2]
    texts = {repr(value), str(value), _shown(value)}
    return any(re.search(rf"(?<![\w.]){re.escape(t)}(?![\w.])", message) for t in texts)


def _keyed(message: str, prefix: str, key: str, value: Any) -> str:
    """A sub-config's error about ``key`` as one that names the full dotted key ``prefix + key`` and the value.

    ``lr must be > 0, got 0`` in ``[pretrain]`` reads ``pretrain.lr must be > 0, got 0``; another path to the same
    key (``pfnm.sigma`` for ``fusion.pfnm.sigma``, ``split.alpha`` for ``scenario.alpha``) becomes the full one; a
    message that names the full key already keeps its words and gets the value if it does not show it.
    """
    full = prefix + key
    context, sep, rest = message.partition(": ")
    lead = _LEAD.match(rest)
    if sep and " " not in context and lead and lead.group(1) == key:  # "party_classes: name must be ..."
        message = rest
    lead = _LEAD.match(message)
    if lead and lead.group(1) == key:
        message = full + message[lead.end() :]
    elif full not in message and prefix and message.startswith(prefix):  # "fusion.maml.inner_lr and outer_lr ..."
        message = re.sub(rf"(?<![\w.]){re.escape(key)}(?![\w\[])", full, message)
    if full not in message:  # a message that does not name its key ("unknown fusion strategy 'x'")
        return f"{full}: {message}" if _mentions(message, value) else f"{full} = {_shown(value)}: {message}"
    if not re.search(r"\bgot\b", message) and not _mentions(message, value):
        message += f"; got {full} = {_shown(value)}"
    return message


def _in_table(message: str, prefix: str) -> str:
    """A message about a combination of a table's values, led by the table's name unless it names a key of it."""
    table = prefix.rstrip(".")
    return message if not table or message.startswith(table) else f"{table}: {message}"


def _party_classes(tables: Any) -> tuple[PartyClass, ...]:
    """``[[party_classes]]``: a list of tables, each with ``name`` and ``share`` and optional resources."""
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("party_classes must be one or more [[party_classes]] tables")
    out = []
    for k, table in enumerate(tables):
        prefix = f"party_classes[{k}]."
        missing = [key for key in ("name", "share") if key not in table]
        if missing:
            raise ConfigError(f"{prefix}{missing[0]} is required")
        name = _typed(prefix + "name", table["name"], str)
        try:
            base = PartyClass(name=name, share=1.0)
        except ValueError as exc:
            raise ConfigError(_keyed(str(exc), prefix, "name", name)) from None
        out.append(_build(PartyClass, table, prefix, base))
    return tuple(out)


def _fusion(table: Any) -> FusionConfig:
    """``[fusion]``: shared keys, ``[fusion.gp]``, and each strategy's own ``[fusion.<settings_key>]`` table."""
    if not isinstance(table, dict):
        raise ConfigError("fusion must be a table")
    fus, classes = dict(table), settings_classes()
    allowed = ({f.name for f in fields(FusionConfig)} - {"settings"}) | set(classes)
    unknown = sorted(set(fus) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join('fusion.' + k for k in unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    settings = {}
    for key in [k for k in fus if k in classes]:
        if not isinstance(fus[key], dict):
            raise ConfigError(f"fusion.{key} must be a table")
        settings[key] = _build(classes[key], fus.pop(key), f"fusion.{key}.")
    gp = fus.pop("gp", {})
    base = _build(FusionConfig, fus, "fusion.")
    try:
        return dataclasses.replace(base, gp=_build(GPConfig, gp, "fusion.gp."), settings=settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _federated(table: Any, defaults: dict) -> FederatedConfig:
    """``[federated]``: the shared keys, and ``[federated.<name>]`` sub-tables built from each algorithm's settings;
    the scenario's ``defaults`` (:meth:`scenarios.Scenario.federated_defaults`) where ``table`` does not set a key."""
    if not isinstance(table, dict):
        raise ConfigError("federated must be a table")
    try:
        table = with_defaults(defaults, table)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    subs = {k: table.pop(k) for k in list(table) if isinstance(table[k], dict)}
    unknown = sorted(set(table) - _FEDERATED)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join('federated.' + k for k in unknown)}; allowed: {', '.join(sorted(_FEDERATED))}"
            f" and one [federated.<name>] table per algorithm ({', '.join(sorted(ALGORITHMS))})"
        )
    settings = {}
    for name, values in subs.items():
        if name not in ALGORITHMS:
            raise ConfigError(
                f"unknown table [federated.{name}]; federated algorithms: {', '.join(sorted(ALGORITHMS))}"
            )
        cls = ALGORITHMS[name].settings
        if cls is None:
            if values:
                keys = ", ".join(f"federated.{name}.{k}" for k in sorted(values))
                raise ConfigError(f"unknown key(s) {keys}: algorithm {name} has no settings of its own")
            continue
        settings[name] = _build(cls, values, f"federated.{name}.")
    base = _build(FederatedConfig, table, "federated.")
    return dataclasses.replace(base, algorithms=settings)


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def resolve(raw: dict[str, Any]) -> RunConfig:
    """Build a validated :class:`RunConfig` from a nested dict (the TOML tree, flags merged in)."""
    raw = dict(raw)
    allowed = _TOP | _CLUSTER | set(_TABLES) | {"scenario", "fusion", "party_classes", "federated"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    scen = raw.pop("scenario", {})
    scen = {"name": scen} if isinstance(scen, str) else dict(scen)
    name = scen.pop("name", "sine-domains")
    try:
        name = canonical_name(str(name))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    defaults_of_scenario = make_options(name, {})
    options = _build(type(defaults_of_scenario), scen, "scenario.", defaults_of_scenario)
    cluster = _build(ClusterConfig, {k: raw.pop(k) for k in list(raw) if k in _CLUSTER}, "")
    kwargs: dict[str, Any] = {"scenario": name, "scenario_options": options, "cluster": cluster}
    defaults = RunConfig.__dataclass_fields__
    for key, cls in _TABLES.items():
        if key in raw:
            kwargs[key] = _build(cls, raw.pop(key), f"{key}.", defaults[key].default_factory())
    if "fusion" in raw:
        kwargs["fusion"] = _fusion(raw.pop("fusion"))
    kwargs["federated"] = _federated(raw.pop("federated", {}), SCENARIOS[name][0].federated_defaults(options))
    for key in ("parties", "test_parties", "seed"):
        if key in raw:
            kwargs[key] = _typed(key, raw.pop(key), int)
    if "widths" in raw:
        widths = raw.pop("widths")
        if not isinstance(widths, list) or not all(isinstance(w, int) and not isinstance(w, bool) for w in widths):
            raise ConfigError(f"widths must be a list of integers, got {widths!r}")
        kwargs["widths"] = tuple(widths)
    if "party_classes" in raw:
        kwargs["party_classes"] = _party_classes(raw.pop("party_classes"))
    if "out" in raw:
        kwargs["out"] = _typed("out", raw.pop("out"), str)
    if "shots" in raw:
        shots = raw.pop("shots")
        if not isinstance(shots, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in shots):
            raise ConfigError(f"shots must be a list of integers, got {shots!r}")
        kwargs["shots"] = tuple(shots)
    if "methods" in raw:
        methods = raw.pop("methods")
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            raise ConfigError(f"methods must be a list of names, got {methods!r}")
        kwargs["methods"] = tuple(methods)
    else:
        kwargs["methods"] = default_methods(kwargs.get("fusion", FusionConfig()).strategy)
    try:
        # every federated method's settings resolved (values left to [federated] filled in), as config.toml shows them
        kwargs["federated"] = kwargs["federated"].for_methods([m for m in kwargs["methods"] if m in ALGORITHMS])
        return RunConfig(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The resolved configuration as the TOML tree that :func:`resolve` reads back."""
    out: dict[str, Any] = {k: getattr(cfg, k) for k in ("parties", "test_parties", "seed", "out")}
    out["shots"] = list(cfg.shots)
    out["methods"] = list(cfg.methods)
    out.update(dataclasses.asdict(cfg.cluster))
    out["scenario"] = {"name": cfg.scenario, **dataclasses.asdict(cfg.scenario_options)}
    out["pretrain"] = dataclasses.asdict(cfg.pretrain)
    out["finetune"] = dataclasses.asdict(cfg.finetune)
    out["fusion"] = dataclasses.asdict(cfg.fusion)
    out["fusion"].update(out["fusion"].pop("settings"))  # each strategy's settings as its own [fusion.<key>]
    if cfg.faults != FaultConfig():
        out["faults"] = dataclasses.asdict(cfg.faults)
    if cfg.widths:
        out["widths"] = list(cfg.widths)
    if cfg.federated != FederatedConfig() or any(is_federated(m) for m in cfg.methods):
        fed = dataclasses.asdict(cfg.federated)
        settings = fed.pop("algorithms")
        out["federated"] = {**fed, **settings}
    if cfg.report != ReportConfig():
        out["report"] = {k: v for k, v in dataclasses.asdict(cfg.report).items() if v is not None}
    if cfg.party_classes:
        out["party_classes"] = [dataclasses.asdict(c) for c in cfg.party_classes]
        out["system"] = dataclasses.asdict(cfg.system)
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps_toml(tree: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the config tree (scalars, lists, nested tables)."""
    tables = lambda v: isinstance(v, list) and v and all(isinstance(t, dict) for t in v)  # noqa: E731
    lines = [f"{k} = {_toml_value(v)}" for k, v in tree.items() if not isinstance(v, dict) and not tables(v)]
    for key, value in tree.items():
        if isinstance(value, dict):
            lines += ["", f"[{prefix}{key}]", dumps_toml(value, f"{prefix}{key}.").strip("\n")]
        elif tables(value):  # an array of tables: [[key]]
            for table in value:
                lines += ["", f"[[{prefix}{key}]]", dumps_toml(table, f"{prefix}{key}.").strip("\n")]
    return "\n".join(lines).strip("\n") + "\n"
