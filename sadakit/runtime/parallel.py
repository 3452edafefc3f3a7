"""Context parallelism (diffusers' ``enable_parallelism``): one decision for all the ranks.

Under context parallelism every rank runs the same pipeline on the same latent, and the
denoiser shards the tokens inside itself (Ulysses all-to-all or ring attention). sadakit
decides outside the denoiser, on the full latent, so the ranks compute the same decision from
the same values, unless their arithmetic differs (non-deterministic kernels): then one rank
would skip a call that another computes, and the collectives inside the network would hang.
The decision's one host vector is therefore reduced across the context-parallel group (a
minimum: a call is skipped only where every rank finds it stable and finite), one small
all-reduce per call. Token sparsity is off there: inside the network each rank holds a shard
of the tokens, which no block's token grid describes.
"""

from __future__ import annotations

from typing import Any


def context_parallel_group(module: Any) -> Any | None:
    """The process group sharding ``module``'s tokens, or None without context parallelism."""
    config = getattr(module, "_parallel_config", None)
    context = getattr(config, "context_parallel_config", None)
    mesh = getattr(context, "_flattened_mesh", None)
    if mesh is None:
        return None
    group = mesh.get_group()
    import torch.distributed as dist

    return group if dist.get_world_size(group) > 1 else None
