"""Run a denoiser on some rows of its batch: slice every batched argument, merge outputs."""

from __future__ import annotations

from typing import Any

import torch


def select_rows(value: Any, rows: torch.Tensor, batch_size: int) -> Any:
    """Index every tensor whose first dimension is the batch, recursively through containers.

    Tensors of another leading size (0-d timesteps, Flux position ids) pass unchanged.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() >= 1 and value.shape[0] == batch_size:
            return value.index_select(0, rows.to(value.device))
        return value
    if isinstance(value, dict):
        return {k: select_rows(v, rows, batch_size) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(select_rows(v, rows, batch_size) for v in value)
    if isinstance(value, list):
        return [select_rows(v, rows, batch_size) for v in value]
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
