"""The warm-start contract: a fitted model that maps task descriptors to models, and the registry of its kinds.

Fusion strategies (:mod:`fusion.strategies`) and federated algorithms (:mod:`fusion.federated`) both produce
:class:`WarmStarter` objects; saved files name their class by its stable ``kind`` (:mod:`fusion.io`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod

import numpy as np


class WarmStarter(ABC):
    """A fitted fusion model: descriptors (m, d) -> parameters (m, n_params) float32.

    ``export`` gives a state of tensors, numbers, strings and lists (loadable with
    ``torch.load(weights_only=True)``); ``restore`` rebuilds the object from it. ``kind`` is the stable name
    that saved files carry (:mod:`fusion.io`); every concrete class sets its own.
    """

    kind: str

    @abstractmethod
    def predict(self, descriptors: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def export(self) -> dict: ...

    @classmethod
    @abstractmethod
    def restore(cls, state: dict) -> WarmStarter: ...

    def summary(self) -> dict:
        """Small facts about the fit for logs and metrics."""
        return {}

    def predict_participating(self, descriptors: np.ndarray) -> np.ndarray:
        """Warm starts (m, n_params) of training parties at their own ``descriptors`` (m, d), whose own models may
        be among those fitted (the participating protocol, :func:`fusion.evaluate.participating`). Default:
        :meth:`predict`; a lookup of one model leaves the party's own out (copying it would be ``local``)."""
        return self.predict(descriptors)

    @classmethod
    def predict_many(cls, starters: list[WarmStarter], descriptors: np.ndarray) -> list[np.ndarray]:
        """Each of ``starters`` (all of this class) at the same ``descriptors``: a class whose starters can share
        work (one batch for several) overrides it. :func:`predict_all` calls it."""
        return [s.predict(descriptors) for s in starters]

    def predict_widths(self, descriptors: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """Warm starts for parties asking for hidden ``widths`` (m,), each embedded at the run's widest spec.

        (m, d) -> (m, n_params of the widest spec). Only starters fitted with ``FitContext.widths`` implement it.
        """
        raise ValueError(f"{type(self).__name__} does not produce warm starts of mixed widths")

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):  # an intermediate interface (e.g. FederatedStart): nothing is saved as it
            return
        if "kind" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must set its own stable `kind` string (the key of saved files)")
        WARM_STARTERS[cls.kind] = cls
        LEGACY_KINDS[cls.__name__] = cls.kind


def predict_all(starters: list[WarmStarter], descriptors: np.ndarray) -> list[np.ndarray]:
    """``[s.predict(descriptors) for s in starters]``, the starters of each class through its :meth:`predict_many`."""
    out: list = [None] * len(starters)
    by_class: dict[type, list[int]] = {}
    for i, starter in enumerate(starters):
        by_class.setdefault(type(starter), []).append(i)
    for cls, rows in by_class.items():
        for i, pred in zip(rows, cls.predict_many([starters[i] for i in rows], descriptors), strict=True):
            out[i] = pred
    return out


WARM_STARTERS: dict[str, type[WarmStarter]] = {}  # kind -> class
LEGACY_KINDS: dict[str, str] = {}  # class name (the key of files saved before kinds) -> kind


def warm_starter_class(kind: str) -> type[WarmStarter]:
    """The class saved under ``kind``: a stable kind string, or a class name from files saved before kinds."""
    return WARM_STARTERS[kind] if kind in WARM_STARTERS else WARM_STARTERS[LEGACY_KINDS[kind]]
