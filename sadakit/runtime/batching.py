"""Run a denoiser on some rows of its batch: slice every batched argument, merge outputs."""

from __future__ import annotations

from typing import Any

import torch


def select_rows(value: Any, rows: torch.Tensor, batch_size: int, skip: frozenset[str] = frozenset()) -> Any:
    """Index every tensor whose first dimension is the batch, recursively through containers.

    Tensors of another leading size (0-d timesteps) pass unchanged, and so do the entries of
    any mapping whose key is in ``skip``: the plugin's unbatched arguments (Flux's position
    ids), whose leading size can equal the batch by coincidence.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() >= 1 and value.shape[0] == batch_size:
            return value.index_select(0, rows.to(value.device))
        return value
    if isinstance(value, dict):
        return {k: v if k in skip else select_rows(v, rows, batch_size, skip) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(select_rows(v, rows, batch_size, skip) for v in value)
    if isinstance(value, list):
        return [select_rows(v, rows, batch_size, skip) for v in value]
    return value


def output_tensor(output: Any, field_name: str = "sample") -> torch.Tensor:
    """The prediction inside a denoiser output (tensor, tuple or diffusers BaseOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return getattr(output, field_name)


def rebuild_output(template: Any, tensor: torch.Tensor, field_name: str = "sample") -> Any:
    """An output of the same kind as ``template`` carrying ``tensor``."""
    if isinstance(template, torch.Tensor) or template is None:
        return tensor
    if isinstance(template, tuple):
        return (tensor,) + tuple(template[1:])
    if isinstance(template, list):
        return [tensor] + list(template[1:])
    return type(template)(**{field_name: tensor})


def map_tensors(value: Any, fn) -> Any:
    """Apply ``fn`` to every tensor in a (nested) output, keeping its structure."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_tensors(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    if hasattr(value, "to_tuple") and hasattr(value, "keys"):  # diffusers BaseOutput
        return type(value)(**{k: map_tensors(value[k], fn) for k in value.keys()})
    return value


def scatter_rows(value: Any, rows: torch.Tensor, batch_size: int) -> Any:
    """Place a sub-batch output into zero tensors of the full batch (structure preserved)."""

    def expand(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0 or t.shape[0] != rows.numel():
            return t
        full = t.new_zeros((batch_size,) + tuple(t.shape[1:]))
        full[rows.to(t.device)] = t
        return full

    return map_tensors(value, expand)
