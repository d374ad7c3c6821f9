"""Package-level names imported from their modules on first use (PEP 562 ``__getattr__``).

``x3kd_core.experiment`` and ``x3kd_core.distill`` re-export their modules' public names so that
``from x3kd_core.distill import DistillationLosses`` works, without importing every module when
the package is imported (reading a config must not import the training or loss code).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for package ``package`` whose name ``n`` lives in submodule
    ``exports[n]``; a name, once imported, is stored in the package so later lookups are plain."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
