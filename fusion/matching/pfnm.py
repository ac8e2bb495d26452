"""Bayesian nonparametric neuron matching (PFNM / SPAHM) for single-hidden-layer nets of different widths.

The hidden units of ``J`` local nets are noisy observations of global *atoms*: a unit ``v`` (its incoming
weights, bias and outgoing weights, see :func:`fusion.models.params.unit_features`) of a net matched to atom ``i``
is ``v ~ N(theta_i, sigma^2 I)``, atoms ``theta_i ~ N(mu0, sigma0^2 I)``, and which atoms a net uses follows
a Beta-Bernoulli (Indian buffet) process with mass ``gamma``. The number of atoms ``L`` is not fixed: a net's
unit that fits no existing atom opens a new one, which is how nets of different widths fuse into one
global model.

Per atom we keep precision-weighted statistics ``eta_i = lambda0 mu0 + sum lambda v`` and
``Lambda_i = lambda0 + sum lambda`` (``lambda = 1/sigma^2``, ``lambda0 = 1/sigma0^2``, per dimension) and the
popularity ``m_i`` (how many nets use it). Matching net ``j`` (``L_j`` units) is one linear sum
assignment over an ``L_j x (L + L_j)`` gain matrix (maximized):

- existing atom ``i`` (the "subtraction trick": the increase of the posterior objective)::

      sum_d [(eta_i + lambda v)^2 / (Lambda_i + lambda) - eta_i^2 / Lambda_i] + log(m_i / (J - m_i))

- new atom ``k = 1..L_j``::

      sum_d [(lambda0 mu0 + lambda v)^2 / (lambda0 + lambda) - (lambda0 mu0)^2 / lambda0] - 2 log k + 2 log(gamma / J)

The nets are seeded with the largest one, the others matched one after the other, then ``sweeps`` passes
each remove one net's statistics and re-match it. Every order here is a function of the nets' *contents*
(width, then a permutation-invariant norm), never of the order in which the caller lists them, and the
final atoms are sorted by (popularity, norm): the matching does not depend on the order of the parties.

Parallelism: the per-net assignments of a sweep go through a :data:`SolveRect` callable
``solve_rect(costs: list[(L_j, C_j)]) -> list[(L_j,)]``. With ``PFNMConfig.block = 1`` (default) it gets one
net at a time, which is exactly the sequential algorithm of the papers. With ``block = B > 1`` the sweep
removes ``B`` nets at once, builds their ``B`` cost matrices against the same statistics and solves them in
ONE call (which a caller may spread over processes), then applies them; the ``B`` nets of a block do not see
each other's new atoms in that sweep, so the blocks are reshuffled every sweep (seeded) to let later sweeps
merge such duplicates. ``block=1`` is the reference; ``block>1`` trades exactness for parallel solves.

Entry points::

    m = match_models(models, specs, PFNMConfig())      # models: list of flat (n_params_j,) vectors
    m.n_atoms, m.assignments, m.popularity            # L; per model (L_j,) atom of each unit; (L,)
    stack = expand(models, specs, m)                   # (n, global_spec.n_params), one canonical order
    avg = matched_average(models, specs, m)            # (global_spec.n_params,)
    warm = to_width(stack, m.global_spec, 80, importance=m.popularity)   # (n, spec_80.n_params)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fusion.lazy import lazy
from fusion.models.activation import activate
from fusion.models.params import unit_features
from fusion.models.spec import MLPSpec

optimize = lazy("scipy.optimize")

SolveRect = Callable[[list[np.ndarray]], list[np.ndarray]]
"""``solve_rect(costs) -> cols``: for each cost matrix (L_j, C_j) with L_j <= C_j, to be *minimized*, the
column chosen for every row: (L_j,) int64, all distinct. The problems are independent."""


def solve_rect_serial(costs: list[np.ndarray]) -> list[np.ndarray]:
    """The reference :data:`SolveRect`: scipy's rectangular linear sum assignment, one problem after the other."""
    out = []
    for cost in costs:
        rows, cols = optimize.linear_sum_assignment(cost)
        col = np.empty(cost.shape[0], dtype=np.int64)
        col[rows] = cols
        out.append(col)
    return out


@dataclass(frozen=True)
class PFNMConfig:
    """Hyper-parameters of the matching (defaults of the PFNM paper: sigma = sigma0 = gamma = 1, 5 sweeps).

    ``sigma``: std of a local unit around its atom; ``sigma0``, ``mu0``: prior std and mean of the atoms;
    ``gamma``: Indian-buffet mass (larger: more atoms); ``sweeps``: remove-and-rematch passes;
    ``empirical_bayes``: replace ``mu0``/``sigma0`` by the per-dimension mean and std of all units pooled
    (their spread minus ``sigma^2``, floored at ``0.1 sigma^2``); ``block``: nets matched together per
    :data:`SolveRect` call (1 = the exact sequential algorithm); ``seed``: shuffles the sweep order;
    ``normalizers``: add the Gaussian log-normalizer terms ``sum_d log(Lambda_i / (Lambda_i + lambda))`` (new atom:
    ``Lambda_i = lambda0``) that the papers' cost leaves out. Without them a new atom costs almost nothing when
    ``sigma << sigma0`` and near-copies of one unit open separate atoms; with them the cost is the exact
    (doubled) log marginal likelihood of the assignment, up to terms that are the same for every column.
    """

    sigma: float = 1.0
    sigma0: float = 1.0
    mu0: float = 0.0
    gamma: float = 1.0
    sweeps: int = 5
    empirical_bayes: bool = False
    block: int = 1
    seed: int = 0
    normalizers: bool = False

    def __post_init__(self) -> None:
        for key in ("sigma", "sigma0", "gamma"):
            if not getattr(self, key) > 0:
                raise ValueError(f"pfnm.{key} must be > 0, got {getattr(self, key)}")
        if self.sweeps < 0:
            raise ValueError(f"pfnm.sweeps must be >= 0, got {self.sweeps}")
        if self.block < 1:
            raise ValueError(f"pfnm.block must be >= 1, got {self.block}")


@dataclass(frozen=True)
class Matching:
    """The result of :func:`match_models` for ``n`` models.

    ``assignments[j]`` (L_j,): the atom of each hidden unit of model ``j`` (distinct within a model);
    ``popularity`` (L,): how many models use each atom (sorted non-increasing); ``atoms`` (L, d): the
    precision-weighted mean of the units matched to each atom (the data only, no prior shrinkage, so a single
    model comes back exactly); ``global_spec``: ``(fan_in, L, fan_out)``.
    """

    assignments: list[np.ndarray]
    popularity: np.ndarray
    atoms: np.ndarray
    global_spec: MLPSpec

    @property
    def n_atoms(self) -> int:
        return len(self.popularity)


def _check_specs(specs: Sequence[MLPSpec]) -> tuple[int, int, str]:
    if not specs:
        raise ValueError("match_models needs at least one model")
    first = specs[0]
    for spec in specs:
        if spec.n_layers != 2:
            raise ValueError(f"PFNM matching supports single-hidden-layer nets, got {spec}")
        if (spec.widths[0], spec.widths[-1], spec.activation) != (first.widths[0], first.widths[-1], first.activation):
            raise ValueError(f"all models need the same inputs, outputs and activation: {first} vs {spec}")
    return first.widths[0], first.widths[-1], first.activation


def model_units(model: np.ndarray, spec: MLPSpec) -> np.ndarray:
    """The hidden units of one flat model (n_params,) as rows (H, fan_in + 1 + fan_out), float64."""
    return unit_features(np.asarray(model, dtype=np.float64)[None], spec, 0)[0]


class _Atoms:
    """Mutable precision-weighted statistics of the current global atoms."""

    def __init__(self, d: int, prior_eta: np.ndarray, prior_lam: np.ndarray, lam: np.ndarray) -> None:
        self.eta = np.zeros((0, d))
        self.Lam = np.zeros((0, d))
        self.count = np.zeros(0, dtype=np.int64)
        self.prior_eta, self.prior_lam, self.lam = prior_eta, prior_lam, lam

    def gains(self, units: np.ndarray, J: int, gamma: float, normalizers: bool) -> np.ndarray:
        """The (L_j, L + L_j) gain matrix (to maximize) of matching ``units`` (L_j, d) to the atoms."""
        lam, eta, Lam = self.lam, self.eta, self.Lam
        a = 1.0 / (Lam + lam)  # (L, d)
        old = (eta**2 / Lam).sum(1)  # (L,)
        existing = (eta**2 * a).sum(1)[None] + 2 * (units * lam) @ (eta * a).T + (units**2 * lam**2) @ a.T - old[None]
        existing += np.log(self.count / (J - self.count))[None]
        pe, pl = self.prior_eta, self.prior_lam
        new_base = ((pe + lam * units) ** 2 / (pl + lam)).sum(1) - (pe**2 / pl).sum()  # (L_j,)
        k = np.arange(1, len(units) + 1)
        new = new_base[:, None] - 2 * np.log(k)[None] + 2 * np.log(gamma / J)
        if normalizers:
            existing += np.log(Lam * a).sum(1)[None]
            new += np.log(pl / (pl + lam)).sum()
        return np.concatenate([existing, new], axis=1)

    def add(self, units: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Add ``units`` (L_j, d) at the chosen columns (``>= L``: new atoms, opened in column order)."""
        L = len(self.count)
        out = np.empty(len(units), dtype=np.int64)
        old = cols < L
        out[old] = cols[old]
        np.add.at(self.eta, cols[old], self.lam * units[old])
        self.Lam[cols[old]] += self.lam
        self.count[cols[old]] += 1
        new_rows = np.flatnonzero(~old)
        new_rows = new_rows[np.argsort(cols[new_rows], kind="stable")]
        out[new_rows] = L + np.arange(len(new_rows))
        self.eta = np.concatenate([self.eta, self.prior_eta + self.lam * units[new_rows]])
        self.Lam = np.concatenate(
            [self.Lam, np.broadcast_to(self.prior_lam + self.lam, (len(new_rows), self.eta.shape[1]))]
        )
        self.count = np.concatenate([self.count, np.ones(len(new_rows), dtype=np.int64)])
        return out

    def remove(self, units: np.ndarray, atoms: np.ndarray) -> None:
        np.subtract.at(self.eta, atoms, self.lam * units)
        self.Lam[atoms] -= self.lam
        self.count[atoms] -= 1

    def prune(self) -> np.ndarray:
        """Drop atoms nobody uses; returns old index -> new index (-1 for dropped)."""
        keep = self.count > 0
        remap = np.full(len(keep), -1, dtype=np.int64)
        remap[keep] = np.arange(keep.sum())
        self.eta, self.Lam, self.count = self.eta[keep], self.Lam[keep], self.count[keep]
        return remap


def canonical_order(units: Sequence[np.ndarray]) -> np.ndarray:
    """The processing order of the nets: widest first, then by a permutation-invariant norm (descending)."""
    norms = np.array([np.sort((u**2).sum(1)).sum() for u in units])
    widths = np.array([len(u) for u in units])
    return np.lexsort((-norms, -widths))


def match_units(units: Sequence[np.ndarray], cfg: PFNMConfig, solve_rect: SolveRect = solve_rect_serial):
    """Match lists of units ``units[j]`` (L_j, d) to global atoms.

    Returns ``(assignments, popularity, atoms)`` as in :class:`Matching` (atoms sorted by popularity, then norm).
    """
    units = [np.asarray(u, dtype=np.float64) for u in units]
    J, d = len(units), units[0].shape[1]
    lam = np.full(d, 1.0 / cfg.sigma**2)
    if cfg.empirical_bayes:
        pooled = np.concatenate(units)
        mu0 = pooled.mean(0)
        var0 = np.maximum(pooled.var(0) - cfg.sigma**2, 0.1 * cfg.sigma**2)
    else:
        mu0, var0 = np.full(d, cfg.mu0), np.full(d, cfg.sigma0**2)
    state = _Atoms(d, mu0 / var0, 1.0 / var0, lam)
    order = canonical_order(units)
    assign: list[np.ndarray | None] = [None] * J

    def match_block(block: Sequence[int]) -> None:
        costs = [-state.gains(units[j], J, cfg.gamma, cfg.normalizers) for j in block]
        for j, cols in zip(block, solve_rect(costs)):
            assign[j] = state.add(units[j], np.asarray(cols, dtype=np.int64))

    state.add(units[order[0]], np.arange(len(units[order[0]])))  # seed: the largest net opens its atoms
    assign[order[0]] = np.arange(len(units[order[0]]))
    rest = order[1:]
    for lo in range(0, len(rest), cfg.block):
        match_block(rest[lo : lo + cfg.block])
    if J > 1:
        for sweep in range(cfg.sweeps):
            sweep_order = order[np.random.default_rng([cfg.seed, sweep]).permutation(J)]
            for lo in range(0, J, cfg.block):
                block = sweep_order[lo : lo + cfg.block]
                for j in block:
                    state.remove(units[j], assign[j])
                if (state.count == 0).any():
                    remap = state.prune()
                    for j in set(range(J)) - set(block.tolist()):
                        assign[j] = remap[assign[j]]
                match_block(block)
    # canonical atom order: most popular first, then by the norm of the atom's mean
    data_eta, data_lam = state.eta - state.prior_eta, state.Lam - state.prior_lam
    atoms = data_eta / data_lam
    perm = np.lexsort((-np.linalg.norm(atoms, axis=1), -state.count))
    rank = np.empty_like(perm)
    rank[perm] = np.arange(len(perm))
    return [rank[a] for a in assign], state.count[perm].copy(), atoms[perm]


def match_models(
    models: Sequence[np.ndarray],
    specs: Sequence[MLPSpec],
    cfg: PFNMConfig | None = None,
    solve_rect: SolveRect = solve_rect_serial,
) -> Matching:
    """Match the hidden units of single-hidden-layer ``models`` (list of flat (n_params_j,) vectors, one spec each).

    The models may have different hidden widths but the same inputs, outputs and activation.
    """
    cfg = cfg or PFNMConfig()
    fan_in, fan_out, activation = _check_specs(specs)
    if len(models) != len(specs):
        raise ValueError(f"{len(models)} models but {len(specs)} specs")
    units = [model_units(m, s) for m, s in zip(models, specs)]
    assignments, popularity, atoms = match_units(units, cfg, solve_rect)
    return Matching(assignments, popularity, atoms, MLPSpec((fan_in, len(popularity), fan_out), activation))


def expand(models: Sequence[np.ndarray], specs: Sequence[MLPSpec], matching: Matching) -> np.ndarray:
    """Every model at the global width: its units at their atoms' slots, zero units elsewhere.

    A zero unit with zero outgoing weights adds nothing, so each row computes exactly its model's function.
    Returns (n, matching.global_spec.n_params) float32, all rows in the same canonical unit order.
    """
    g = matching.global_spec
    fan_in, L, fan_out = g.widths
    (w0, b0, b1), (v0, v1, c1) = g.offsets
    out = np.zeros((len(models), g.n_params), dtype=np.float32)
    for row, model, spec, slots in zip(out, models, specs, matching.assignments):
        model = np.asarray(model, dtype=np.float32)
        (mw0, mb0, mb1), (mv0, mv1, mc1) = spec.offsets
        H = spec.widths[1]
        w_in = row[w0:b0].reshape(L, fan_in)
        w_in[slots] = model[mw0:mb0].reshape(H, fan_in)
        row[b0:b1][slots] = model[mb0:mb1]
        w_out = row[v0:v1].reshape(fan_out, L)
        w_out[:, slots] = model[mv0:mv1].reshape(fan_out, H)
        row[v1:c1] = model[mv1:mc1]
    return out


def matched_average(models: Sequence[np.ndarray], specs: Sequence[MLPSpec], matching: Matching) -> np.ndarray:
    """One global model (global_spec.n_params,) float32: the matched units averaged.

    Incoming weights and bias of an atom: the precision-weighted mean of the units matched to it (one sigma
    for every party, so the mean over the parties that have the atom). Outgoing weights and the output bias:
    the mean of the expanded models (absent units count as zero), so the global output is the average of the
    local outputs whenever the matched units agree — an atom that only some parties use is not over-counted.
    """
    g = matching.global_spec
    fan_in, L, fan_out = g.widths
    (w0, b0, b1), _ = g.offsets
    out = expand(models, specs, matching).mean(axis=0)
    out[w0:b0] = matching.atoms[:, :fan_in].reshape(-1)
    out[b0:b1] = matching.atoms[:, fan_in]
    return out.astype(np.float32)


def unit_importance(params: np.ndarray, spec: MLPSpec) -> np.ndarray:
    """How much each hidden unit can contribute: ||outgoing|| * ||(incoming, bias)||. (m, n_params) -> (m, H)."""
    feats = unit_features(np.asarray(params, dtype=np.float64), spec, 0)
    fan_in = spec.widths[0]
    return np.linalg.norm(feats[..., fan_in + 1 :], axis=-1) * np.linalg.norm(feats[..., : fan_in + 1], axis=-1)


def to_width(
    params: np.ndarray,
    spec: MLPSpec,
    width: int,
    importance: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    refit_x: np.ndarray | None = None,
    ridge: float = 1e-6,
) -> np.ndarray:
    """Models at the global width ``spec`` (m, n_params) -> models at hidden width ``width`` (m, n_params_w).

    Narrower: keep the ``width`` most important units of each model, in their canonical order.
    ``importance`` (L,) ranks the atoms for every model alike (e.g. ``Matching.popularity``; ties broken by
    :func:`unit_importance`); None ranks each model's units by :func:`unit_importance` alone.
    Wider: append units with zero outgoing weights (the function does not change) and, when ``rng`` is
    given, incoming weights drawn like ``torch.nn.Linear``'s init so fine-tuning can use them (else zero).
    ``refit_x`` (N, fan_in): when cutting units, refit each narrow model's outgoing weights and output bias by
    (``ridge``-regularized) least squares so that its outputs on these inputs match the wide model's — the
    dropped units' contribution is taken over by the kept ones as far as they can (function-space refit).
    """
    params = np.asarray(params, dtype=np.float32)
    fan_in, L, fan_out = spec.widths
    target = MLPSpec((fan_in, width, fan_out), spec.activation)
    m = len(params)
    (w0, b0, b1), (v0, v1, c1) = spec.offsets
    w_in = params[:, w0:b0].reshape(m, L, fan_in)
    bias = params[:, b0:b1]
    w_out = params[:, v0:v1].reshape(m, fan_out, L)
    out_bias = params[:, v1:c1]
    keep = min(width, L)
    score = unit_importance(params, spec)
    if importance is not None:
        importance = np.asarray(importance, dtype=np.float64)
        if importance.shape != (L,):
            raise ValueError(f"importance must have shape ({L},), got {importance.shape}")
        ranks = np.lexsort((-score, np.broadcast_to(-importance, score.shape)), axis=1)
    else:
        ranks = np.argsort(-score, axis=1, kind="stable")
    chosen = np.sort(ranks[:, :keep], axis=1)  # (m, keep), canonical order kept
    pad = width - keep
    new_in = np.zeros((m, pad, fan_in), np.float32)
    new_b = np.zeros((m, pad), np.float32)
    if pad and rng is not None:
        bound = fan_in**-0.5
        new_in = rng.uniform(-bound, bound, size=new_in.shape).astype(np.float32)
        new_b = rng.uniform(-bound, bound, size=new_b.shape).astype(np.float32)
    parts = [
        np.concatenate([np.take_along_axis(w_in, chosen[:, :, None], axis=1), new_in], axis=1).reshape(m, -1),
        np.concatenate([np.take_along_axis(bias, chosen, axis=1), new_b], axis=1),
        np.concatenate(
            [np.take_along_axis(w_out, chosen[:, None, :], axis=2), np.zeros((m, fan_out, pad), np.float32)], axis=2
        ).reshape(m, -1),
        out_bias,
    ]
    out = np.concatenate(parts, axis=1)
    assert out.shape == (m, target.n_params)
    if refit_x is not None and keep < L:
        out = _refit_outputs(out, target, params, spec, np.asarray(refit_x, dtype=np.float64), ridge)
    return out


def _refit_outputs(narrow, spec_n, wide, spec_w, x, ridge) -> np.ndarray:
    """Least-squares outgoing weights + output bias of ``narrow`` (m, n) matching ``wide``'s outputs on ``x``."""
    act = spec_n.activation
    fan_in, H, fan_out = spec_n.widths
    (w0, b0, b1), (v0, v1, c1) = spec_n.offsets
    (gw0, gb0, gb1), (gv0, gv1, gc1) = spec_w.offsets
    L = spec_w.widths[1]
    out = narrow.copy()
    for row, big in zip(out, wide):
        big = big.astype(np.float64)
        features = activate(x @ big[gw0:gb0].reshape(L, fan_in).T + big[gb0:gb1], act)
        target = features @ big[gv0:gv1].reshape(fan_out, L).T
        target += big[gv1:gc1]
        hidden = activate(x @ row[w0:b0].reshape(H, fan_in).T.astype(np.float64) + row[b0:b1], act)
        design = np.concatenate([hidden, np.ones((len(x), 1))], axis=1)
        gram = design.T @ design + ridge * len(x) * np.eye(H + 1)
        coef = np.linalg.solve(gram, design.T @ target)  # (H + 1, fan_out)
        row[v0:v1] = coef[:H].T.reshape(-1)
        row[v1:c1] = coef[H]
    return out
