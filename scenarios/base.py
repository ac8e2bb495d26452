"""The ``Scenario`` interface: a family of tasks, each party's private data, the model, loss and metric."""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod

import numpy as np

from fusion.adapt import FinetuneConfig, recipe_for
from fusion.layout import ModelLayout, party_families, party_widths  # noqa: F401  (re-exported)
from fusion.lazy import torch
from fusion.models.params import init_params
from fusion.models.spec import MLPSpec, Spec, spec_for_family
from fusion.models.widths import at_width
from fusion.streams import Stream, party_rng, party_torch_generator  # noqa: F401  (re-exported)


class Scenario(ABC):
    """A task family. Subclasses set ``name``, ``metric_name``, ``lower_is_better`` and implement the methods.

    Arrays: a descriptor is (d,) float; data are ``x`` (N, fan_in) and ``y`` (N, fan_out) float32
    (classification: ``y`` (N,) int64 labels). ``loss`` and ``metric`` work on batches of parties:
    ``pred`` (P, N, fan_out), ``y`` (P, N, ...) -> (P,).
    """

    name: str
    metric_name: str
    lower_is_better: bool = True
    outputs: str = "values"  # "logits": classification over all outputs (fusion combines class probabilities)
    residual_shots: bool = False  # shots can take the residual GP (fusion.adapt.residual): values, squared error, probe
    readout_shots: bool = False  # a classifier: [finetune] recipe "auto" refits read-outs first (fusion.adapt.readout)
    shot_group: int = 1  # shot draws come in groups of this many (one per class): FinetuneConfig.fold_group

    def __init__(
        self, spec: Spec, target_spec: Spec | None = None, families: tuple[Spec, ...] = (), own_target: bool = True
    ) -> None:
        self.spec = spec  # the parties' model (a run of mixed families: the largest family, the packed row's size)
        self.target_spec = spec if target_spec is None else target_spec  # the model novel parties receive
        # A run whose parties mix architecture families: each party's family drawn from (seed, party id)
        # (:func:`fusion.layout.party_families`). ``own_target``: novel parties receive their own drawn family (no
        # ``target_arch``). Which party has which model is the run's layout (:func:`model_layout`).
        self.families = tuple(families) if len(families) > 1 else ()
        self.own_target = own_target

    @abstractmethod
    def descriptor(self, rng: np.random.Generator) -> np.ndarray:
        """Draw one task descriptor (d,)."""

    @abstractmethod
    def train_data(self, descriptor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A party's private pretraining data for its task."""

    @abstractmethod
    def shot_data(self, descriptor: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``k`` labelled examples of the task for fine-tuning (the first k of a larger draw are nested)."""

    @abstractmethod
    def eval_data(self, descriptor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Held-out evaluation data of the task."""

    @abstractmethod
    def loss(self, pred: torch.Tensor, y: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """Training loss per party: (P,)."""

    loss_grad = None
    """Optional ``loss_grad(pred, y, descriptors) -> (losses (P,), d(losses.sum()) / d pred)``: :meth:`loss` and its
    gradient in closed form, which the compiled training path uses instead of autograd (a few ops, no graph)."""

    @abstractmethod
    def metric(self, pred: torch.Tensor, y: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """Evaluation metric per party: (P,)."""

    def label_counts(self, seed: int, ids: np.ndarray) -> np.ndarray | None:
        """Examples per class (n, classes) of each party's data (train and held-out parts) for ``partition.png``;
        None for a scenario without class labels (the plot then shows the descriptors)."""
        return None

    def real_rows(self, y: np.ndarray) -> np.ndarray:
        """Which rows of stacked training targets ``y`` (n, N, ...) are data, not padding: (n, N) bool."""
        return np.ones(y.shape[:2], dtype=bool)

    def init_params(self, generator: torch.Generator) -> torch.Tensor:
        """A party's random initial model (n_params,); default: ``torch.nn.Linear``'s init."""
        return init_params(self.spec, generator)

    def init_at(self, spec: Spec, generator: torch.Generator) -> torch.Tensor:
        """A party's random initial model (spec.n_params,) at ``spec`` (a width or family of the run), by this
        scenario's rule (:meth:`init_params` of the scenario on ``spec``)."""
        return self.init_params(generator) if spec == self.spec else with_spec(self, spec).init_params(generator)

    def shot_recipe(self, cfg: FinetuneConfig) -> tuple[FinetuneConfig, np.ndarray | None]:
        """``cfg`` with its k-shot recipe resolved for this scenario (:func:`fusion.adapt.finetuning.recipe_for`), and
        the probe inputs the residual GP needs (None for the other recipes): the arguments of ``finetune``."""
        group = cfg.fold_group if cfg.fold_group > 1 else self.shot_group
        recipe = recipe_for(cfg, self.residual_shots, self.readout_shots)
        resolved = dataclasses.replace(cfg, recipe=recipe, fold_group=group)
        return resolved, self.probe_inputs() if resolved.recipe == "residual_gp" else None

    @classmethod
    def federated_defaults(cls, options) -> dict:
        """The ``[federated]`` keys this task family needs other than :class:`fusion.federated.FederatedConfig`'s
        defaults (PFLlib's: one epoch of minibatches of 10, SGD at lr 0.005), for a run with these ``options``: a TOML
        tree (keys, and ``{"<algorithm>": {...}}`` for ``[federated.<algorithm>]``), applied where the run's
        ``[federated]`` table does not set the key; the run's config.toml shows the resolved values. Default: none."""
        return {}

    def probe_inputs(self) -> np.ndarray | None:
        """Unlabeled inputs (N, fan_in) covering where the tasks are queried, for function-space fusion.

        None: the scenario has none to offer (strategies that need them refuse to run).
        """
        return None

    @property
    def max_shots(self) -> int | None:
        """The largest ``k`` this scenario can provide (None: unbounded)."""
        return None

    def truth_curve(self, descriptor: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """For 1-D regression: evenly spaced inputs (N, 1) and the task's noise-free targets (N, 1), for plots.

        None (the default) when the scenario has no such curve; the run then skips the warm-start plot.
        """
        return None

    def shot_examples(self, k: int) -> int:
        """How many examples ``k`` shots are (classification: ``k`` per class); the first ones of a shot draw."""
        return k

    def prepare(self, seed: int, n_train: int, n_test: int) -> None:
        """Called once per run in the driver, before the scenario goes to the actors.

        Party ids ``0..n_train-1`` pretrain, ``n_train..n_train+n_test-1`` are the unseen test parties.
        Check inputs here (data folders, sizes) and raise ``ValueError`` naming the problem. Default: nothing.
        """
        return None

    # A party's task as a function of (run seed, party id). The defaults draw from the party's streams;
    # a scenario whose tasks are fixed entities (MovieLens users) overrides these four.
    def party_descriptor(self, seed: int, party_id: int) -> np.ndarray:
        return self.descriptor(party_rng(seed, party_id, Stream.DESCRIPTOR))

    def party_train_data(self, seed: int, party_id: int, descriptor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.train_data(descriptor, party_rng(seed, party_id, Stream.DATA))

    def party_shot_data(
        self, seed: int, party_id: int, descriptor: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.shot_data(descriptor, k, party_rng(seed, party_id, Stream.SHOTS))

    def party_eval_data(self, seed: int, party_id: int, descriptor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.eval_data(descriptor, party_rng(seed, party_id, Stream.EVAL))

    def party_weights(self, seed: int, ids: np.ndarray) -> np.ndarray | None:
        """Weights (n,) of the test parties' metrics in a sample-weighted mean (PFLlib's report: their number of
        test samples); None (the default): parties count alike and the summary has no weighted mean."""
        return None


def party_descriptors(scenario: Scenario, seed: int, ids: np.ndarray) -> np.ndarray:
    """Descriptors (n, d) float32 of parties ``ids``."""
    return np.stack([scenario.party_descriptor(seed, i) for i in ids]).astype(np.float32)


def training_data(scenario: Scenario, seed: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The private data of parties ``ids``, as the parties themselves draw it: descriptors (n, d), x, y stacked."""
    desc = party_descriptors(scenario, seed, ids)
    data = [scenario.party_train_data(seed, i, d) for i, d in zip(ids, desc)]
    return desc, np.stack([d[0] for d in data]), np.stack([d[1] for d in data])


def model_specs(
    archs: tuple[str, ...], target_arch: str, hidden: tuple[int, ...], fan_in: int, fan_out: int
) -> tuple[Spec, Spec]:
    """The parties' model and the one novel parties receive, for a scenario with ``[scenario] archs`` /
    ``target_arch`` keys (:func:`fusion.models.spec.spec_for_family` names: ``mlp-100``, ``cnn-s``, ``cnn-m``); without
    ``archs`` the parties' model is an MLP ``[fan_in, *hidden, fan_out]``, without ``target_arch`` the same.
    Several ``archs`` (a run of mixed families, :func:`model_families`): the largest of them (the size models are
    packed to).

    Raises ``ValueError`` naming the key for unknown or unusable families.
    """
    specs = []
    for key, names in (("archs", archs), ("target_arch", (target_arch,) if target_arch else ())):
        for name in names:
            try:
                specs.append(spec_for_family(name, fan_in, fan_out))
            except ValueError as exc:
                raise ValueError(f"scenario.{key}: {exc}") from None
    if len(set(archs)) != len(archs):
        raise ValueError(f"scenario.archs must name distinct families, got {list(archs)}")
    own = max(specs[: len(archs)], key=lambda s: s.n_params) if archs else MLPSpec((fan_in, *hidden, fan_out))
    return own, (specs[-1] if target_arch else own)


def model_families(archs: tuple[str, ...], fan_in: int, fan_out: int) -> tuple[Spec, ...]:
    """The specs of ``archs`` when they are several (a run of mixed families), else ()."""
    return tuple(spec_for_family(a, fan_in, fan_out) for a in archs) if len(archs) > 1 else ()


def with_spec(scenario: Scenario, spec: Spec) -> Scenario:
    """The same task family with every party (and novel party) on ``spec`` (a shallow copy; data unchanged)."""
    out = copy.copy(scenario)
    out.spec = out.target_spec = spec
    out.families, out.own_target = (), True
    return out


def with_hidden_width(scenario: Scenario, width: int) -> Scenario:
    """The same task family with single-hidden-layer nets of width ``width`` (a shallow copy; data unchanged)."""
    out = copy.copy(scenario)
    out.spec = out.target_spec = at_width(scenario.spec, width)  # (target_arch with widths is refused)
    return out


def model_layout(scenario: Scenario, widths: tuple[int, ...] = ()) -> ModelLayout:
    """The run's population layout (:class:`fusion.layout.ModelLayout`) from the scenario's architectures and the
    run's ``widths`` (mixed hidden widths: the stack's rows are the widest net). Raises ``ValueError`` naming the
    problem for combinations no run supports."""
    single = isinstance(scenario.spec, MLPSpec) and scenario.spec.n_layers == 2
    spec = at_width(scenario.spec, max(widths)) if widths and single else scenario.spec  # the layout checks the rest
    if scenario.families:  # None: each novel party receives its own drawn family
        target = None if scenario.own_target else scenario.target_spec
    else:
        target = None if scenario.target_spec == scenario.spec else scenario.target_spec
    return ModelLayout(spec, target, tuple(widths), scenario.families)
