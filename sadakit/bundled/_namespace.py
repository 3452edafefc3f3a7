"""The bundled models' namespaces: names looked up in their submodules on first use.

Why lazy: ``sadakit.bundled.shapes.model`` (what ``sadakit generate`` loads) must not pull in
the judge and the comparison, which are evaluation code; the namespace still offers all names.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_namespace(package: str, exports: dict[str, tuple[str, ...]], aliases: dict[str, str]
                   ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: ``exports`` maps a submodule (relative,
    ``".."`` for a sibling of the package) to the names it provides, ``aliases`` renames some.
    Any other public name of the ``model`` or ``judging`` submodule is found too (builders and
    constants, for the training scripts)."""
    where = {name: module for module, names in exports.items() for name in names}
    public = sorted(where)

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is not None:
            return getattr(importlib.import_module(module if module.startswith(".") else f".{module}", package),
                           aliases.get(name, name))
        if not name.startswith("_"):
            for fallback in ("model", "judging"):
                found = getattr(importlib.import_module(f".{fallback}", package), name, None)
                if found is not None:
                    return found
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return getattr_, lambda: public, public
