"""Heavy modules imported on first use.

``from fusion.lazy import torch`` binds a stand-in that imports torch the first time one of its attributes
is read; until then nothing is loaded. Validating a run's config walks the registries of scenarios, strategies
and federated algorithms, whose modules compute with torch but need none of it to declare their settings, so
the CLI answers ``--help`` and bad input without torch's ~2 s import. ``lazy("scipy.optimize")`` does the same
for any module. Code that runs reads ``torch.zeros`` etc. as usual: after the first import, an attribute costs
one dictionary lookup more.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class LazyModule(types.ModuleType):
    """Stands for the module ``name``; reading an attribute imports it (once) and reads the real one."""

    def __getattr__(self, attr: str) -> Any:
        name = object.__getattribute__(self, "__name__")
        module = sys.modules.get(name)
        if module is None or module is self:
            module = importlib.import_module(name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self.__name__!r}>"


def lazy(name: str) -> Any:
    """The module ``name`` if it is imported already, else a :class:`LazyModule` for it."""
    return sys.modules.get(name) or LazyModule(name)


torch = lazy("torch")
