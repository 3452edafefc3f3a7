"""Whether a method left the pipeline as it found it (hooks, instance forwards, module order, scheduler).

Why: a method that leaves anything behind silently changes every method measured after it, so
the harness compares a fingerprint of the denoising components after every removal.
"""

from __future__ import annotations

from typing import Any

import torch


DENOISING_COMPONENTS = ("unet", "transformer", "controlnet")


def pipeline_fingerprint(pipe: Any) -> tuple:
    """What a method must leave as it found it: every module of the denoising components in order, with
    foreign instance-level forwards, torch hooks and diffusers hooks, plus the scheduler object.
    (An instance ``forward`` that is the module's own class forward counts as none. Text
    encoders are left out: transformers installs its output-recording hooks lazily.)"""
    parts: list[Any] = [id(getattr(pipe, "scheduler", None))]
    for component_name in DENOISING_COMPONENTS:
        component = getattr(pipe, component_name, None)
        if not isinstance(component, torch.nn.Module):
            continue
        for name, module in component.named_modules():
            registry = module.__dict__.get("_diffusers_hook")
            parts.append((
                component_name, name, id(module), _foreign_forward(module),
                len(module._forward_hooks), len(module._forward_pre_hooks),
                tuple(registry.hooks) if registry is not None else (),
            ))
    return tuple(parts)


def _foreign_forward(module: torch.nn.Module) -> bool:
    bound = module.__dict__.get("forward")
    if bound is None:
        return False
    return not (getattr(bound, "__func__", None) is type(module).forward and getattr(bound, "__self__", None) is module)


def fingerprint_diff(before: tuple, after: tuple) -> str:
    """A short human description of the first difference between two fingerprints."""
    if before[0] != after[0]:
        return "the scheduler was replaced"
    for a, b in zip(before[1:], after[1:]):
        if a != b:
            if a[:3] != b[:3]:
                return f"module order changed at {a[0]}.{a[1] or '<root>'} (now {b[0]}.{b[1] or '<root>'})"
            what = ["instance forward", "forward hooks", "forward pre-hooks", "diffusers hooks"]
            changed = [w for w, x, y in zip(what, a[3:], b[3:]) if x != y]
            return f"{a[0]}.{a[1] or '<root>'}: {', '.join(changed)} left behind"
    return "modules were added or removed"


class PipelineNotRestoredError(RuntimeError):
    """A method left hooks or patches behind: later measurements would be wrong, so not per-peer."""
