"""The eager door in front of a (possibly compiled) network: decisions never enter its graph.

``nn.Module.__call__`` runs ``module._compiled_call_impl`` when it is set (``module.compile()``
puts ``torch.compile(module._call_impl)`` there) and ``module._call_impl`` otherwise. A door
standing in that slot is the first thing a pipeline's ``self.unet(...)`` reaches: it decides
the call eagerly, then calls whatever stood there before (the user's compiled call, or the
plain one) for the rows and tokens to compute. Inside, the hooks only pass through, so a
``fullgraph=True`` compile traces the network and nothing of sadakit's bookkeeping.

The slot is private to torch, so the door is checked (and re-installed) at every generation
start: a ``module.compile()`` after ``accelerate`` replaces it, a ``torch.compile(module)``
wrapper assigned to the pipeline after ``accelerate`` is a new outer object. Where neither
check can run (a pipeline without a progress bar) the hooks fall back to deciding inside the
forward, as a compiler-disabled region (graph breaks, no ``fullgraph``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

#: serve(network, eager, args, kwargs) -> output; ``network`` runs the module as the user set it
#: up (compiled or not), ``eager`` runs it uncompiled (for the once-per-shape measured call)
Serve = Callable[[Callable[..., Any], Callable[..., Any], tuple, dict], Any]


class NetworkDoor:
    """Stands in one module's ``_compiled_call_impl`` slot while the pipeline is accelerated."""

    def __init__(self, owner: torch.nn.Module, inner: torch.nn.Module, serve: Serve, session: Any) -> None:
        self.owner = owner  # the object the pipeline calls (the module, or a compile wrapper of it)
        self.inner = inner  # the hooked module
        self.previous = owner.__dict__.get("_compiled_call_impl")
        self.serve = serve
        self.session = session  # its ``network_open`` is True while a door runs the network

    @torch.compiler.disable(recursive=False)  # a top frame dynamo skips; the network's frames compile
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.session.network_open:  # re-entered from inside a network it runs
            return self._through(*args, **kwargs)
        return self.serve(self.network, self.eager, args, kwargs)

    def _through(self, *args: Any, **kwargs: Any) -> Any:
        previous = self.previous
        return previous(*args, **kwargs) if previous is not None else self.owner._call_impl(*args, **kwargs)

    def network(self, *args: Any, **kwargs: Any) -> Any:
        """The module's call as the user set it up (compiled or not), hooks passing through."""
        self.session.network_open = True
        try:
            return self._through(*args, **kwargs)
        finally:
            self.session.network_open = False

    def eager(self, *args: Any, **kwargs: Any) -> Any:
        """The module's uncompiled call (hooks passing through), compiled submodules included
        (``compile_repeated_blocks`` compiles each block on its own)."""
        self.session.network_open = True
        try:
            with torch.compiler.set_stance("force_eager"):
                return self.inner._call_impl(*args, **kwargs)
        finally:
            self.session.network_open = False

    def __deepcopy__(self, memo: dict) -> Any:
        from .marker import raise_copy_error

        raise_copy_error(self.session)


def outer_objects(pipe: Any, module: torch.nn.Module) -> list[torch.nn.Module]:
    """What the pipeline calls for ``module``: the module itself and any ``torch.compile``
    wrapper of it among the pipeline's components."""
    found = [module]
    components = getattr(pipe, "components", None) or {}
    for value in components.values():
        if isinstance(value, torch.nn.Module) and value is not module and getattr(value, "_orig_mod", None) is module:
            found.append(value)
    return found


def ensure_doors(doors: dict[int, NetworkDoor], pipe: Any, module: torch.nn.Module, serve: Serve,
                 session: Any) -> None:
    """Put a door in every outer object of ``module`` that lacks one (or lost it to a compile)."""
    for owner in outer_objects(pipe, module):
        door = doors.get(id(owner))
        current = owner.__dict__.get("_compiled_call_impl")
        if door is not None and current is door:
            continue
        if door is not None and current is not door:
            door.previous = current  # compiled again after accelerate: serve the new compile
        else:
            door = doors[id(owner)] = NetworkDoor(owner, module, serve, session)
        owner._compiled_call_impl = door


def remove_doors(doors: dict[int, NetworkDoor]) -> None:
    """Put back what each slot held before (the user's compiled call, or nothing)."""
    for door in doors.values():
        if door.owner.__dict__.get("_compiled_call_impl") is door:
            door.owner._compiled_call_impl = door.previous
    doors.clear()
