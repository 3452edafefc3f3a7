"""Token-wise sparsity inside blocks: which tokens a block computes, and the residual cache
that fills in the others.

The cache holds, per row of the step (call streams side by side), each token's last residual
``block(h) - h``, so a pruned token follows its current input instead of freezing at an old
output. Everything a block needs is prepared eagerly before the network runs: one
:class:`BlockJob` per prunable block, holding its token indices (computed once per call) and
the cached residuals of the call's rows. Inside the (possibly compiled, ``fullgraph``) network
``TokenBlockHook`` only does tensor work on them and leaves the new residuals on the job;
:meth:`TokenCache.end_call` stores them and does the accounting, eagerly, after the network.

Hidden states may hold tokens besides the grid's (:class:`~sadakit.spec.OtherTokens`: a
prepended global token, text tokens in a joint sequence). They are computed on every call; the
job's ``hidden_idx`` lists them with the selected grid tokens, and the cache keeps their last
residuals too, so one index set serves gather, scatter and merge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..core import tokens
from ..spec import OtherTokens, TokenBlockSpec
from .plans import Grid, TokenPlan

#: (block name, tokens, tokens computed, rows, FLOPs of the full block or None)
BlockAccount = Callable[[str, int, int, int, "float | None"], None]


@dataclass(eq=False)
class BlockJob:
    """What one block does on this network call, prepared before the call."""

    n_tokens: int  # all tokens of the block's hidden states (grid and other tokens)
    #: (B, k) per-row grid-token indices and (k,) one set for blocks whose token arguments have
    #: no rows; both None: run in full and keep the residual
    idx: torch.Tensor | None = None
    shared_idx: torch.Tensor | None = None
    #: the same selections as indices into the hidden states: the other tokens included, the
    #: grid tokens shifted past leading ones (the very tensors above when there are none)
    hidden_idx: torch.Tensor | None = None
    shared_hidden_idx: torch.Tensor | None = None
    others: int = 0  # tokens of the hidden states beyond the grid's, always computed
    residual_in: torch.Tensor | None = None  # the call's rows of the cache (partial calls)
    residual_out: torch.Tensor | None = None  # set inside the network; stored after it
    k: int = 0  # grid tokens computed
    #: set inside the network when the block saw another token count than it was planned for
    #: (other tokens follow the prompt's length): the shape's token counts are learned again
    mismatch: bool = False

    @property
    def grid_tokens(self) -> int:
        return self.n_tokens - self.others


@dataclass(eq=False)
class BlockRoute:
    """The blocks' jobs for one network call (blocks without a job run in full, untouched).

    ``learning``: the call runs eagerly and every block reports its token count (the first
    call of each input shape), through the eager :meth:`TokenCache.learned`.
    """

    jobs: dict[str, BlockJob]
    learning: bool = False


class TokenCache:
    """Residual caches and the current call's block route, for every eligible block."""

    def __init__(self, blocks: list[TokenBlockSpec], keep_residuals: bool, highest_only: bool,
                 account: BlockAccount, block_flops: Callable[[str], "float | None"],
                 token_buckets: tuple[float, ...] | None = None,
                 tokens_by_shape: dict[tuple, dict[str, int]] | None = None) -> None:
        self.layouts = {b.name: b.layout for b in blocks}
        self.other_tokens: dict[str, OtherTokens] = {b.name: b.other_tokens for b in blocks
                                                     if b.other_tokens is not None}
        self.with_token_args = {b.name for b in blocks if b.token_args}
        self.keep_residuals = keep_residuals
        #: ``token_resolutions="highest"``: only the blocks with the most tokens are ever pruned,
        #: so only theirs need a residual cache
        self.highest_only = highest_only
        #: fractions of a grid's tokens that partial calls round up to (static shapes), or None
        self.token_buckets = token_buckets
        self._account = account
        self._block_flops = block_flops
        self.caches: dict[str, torch.Tensor] = {}
        #: input shape (without the batch) -> block name -> tokens it saw on a full call (shared
        #: by the sessions of one network, see .learned)
        self.tokens_by_shape: dict[tuple, dict[str, int]] = {} if tokens_by_shape is None else tokens_by_shape
        self.block_tokens: dict[str, int] = {}  # those of the current call's shape
        # set for the duration of one network call
        self.route: BlockRoute | None = None
        self.rows: torch.Tensor | None = None  # the call's rows among the step's; None: all of them
        self.rows_host: list[int] | None = None
        self.used = False  # a block ran on a token subset during this call
        self.step_rows = 0  # rows of a full step (for cache shapes)
        self.latent_grid: Grid | None = None
        self._shape_key: tuple | None = None  # the current call's key in tokens_by_shape (expert, shape)
        self.active = True  # False: no block is pruned (context parallelism shards the tokens)
        #: the expert module the current call reaches (see .experts): its blocks' token counts
        #: are learned on its own first call of each shape
        self.expert = 0

    def clear(self) -> None:
        self.caches.clear()
        self.end_call(ran=False)
        self.latent_grid = None

    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.caches.values())

    def knows(self, shape: tuple) -> bool:
        """Whether the blocks' token counts for calls of this input shape are known."""
        return not self.layouts or self._key(shape) in self.tokens_by_shape

    def _key(self, shape: tuple) -> tuple:
        return (self.expert, *shape[1:])

    def placement(self, name: str, n_tokens: int, latent_grid: Grid) -> tuple[Grid, int] | None:
        """The grid block ``name``'s hidden tokens lie on and how many of them are other
        tokens (:class:`~sadakit.spec.OtherTokens`); None if no grid matches."""
        others = self._other_count(name, n_tokens, latent_grid)
        if others is None:
            return None
        levels = 0 if self.layouts.get(name) == "exact" else 6
        grid = tokens.grid_for_tokens(latent_grid, n_tokens - others, max_levels=levels)
        return None if grid is None else (grid, others)

    def _other_count(self, name: str, n_tokens: int, latent_grid: Grid | None) -> int | None:
        other = self.other_tokens.get(name)
        if other is None:
            return 0
        if other.count is not None:
            count = other.count
        elif latent_grid is None:
            return None
        else:  # layout "exact" (checked by TokenBlockSpec): the rest beyond the grid's tokens
            count = n_tokens - math.prod(latent_grid)
        return count if 0 <= count < n_tokens else None

    def eligible_grids(self, latent_grid: Grid, highest_only: bool, note: Callable[[str], None]) -> list[Grid]:
        """The token grids of the blocks seen so far, largest first; blocks whose token count
        matches no grid of the latent are named in a note (they always run in full)."""
        if not self.block_tokens:
            if not self.layouts:
                note("token sparsity inactive: the plugin names no eligible block")
            return []
        by_grid: dict[Grid, int] = {}
        unmatched = []
        for name, n in self.block_tokens.items():
            placed = self.placement(name, n, latent_grid)
            if placed is None:
                unmatched.append(f"{name} ({n} tokens)")
            else:
                by_grid[placed[0]] = n - placed[1]
        if unmatched:
            shown = ", ".join(unmatched[:3]) + (f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else "")
            note(f"token sparsity inactive in block(s) {shown}: their token count matches no grid of the "
                 f"latent's token grid {latent_grid} (layouts: see TokenBlockSpec.layout and other_tokens)")
        grids = sorted(by_grid, key=lambda g: -by_grid[g])
        return grids[:1] if highest_only else grids

    # ------------------------------------------------------------------ before the network
    def use_shape(self, shape: tuple) -> None:
        """The block token counts of calls shaped like ``shape`` become the current ones."""
        self.block_tokens = self.tokens_by_shape.get(self._key(shape), {})

    def begin_call(self, plan: TokenPlan | None, rows: list[int] | None, rows_tensor: torch.Tensor | None,
                   shape: tuple, record: bool = True, learn: bool = False) -> None:
        """Prepare the blocks' jobs for one network call on ``rows`` of the step (None: all).

        ``plan`` None: a full call, which keeps the prunable blocks' residuals when ``record``
        (later calls of the generation may prune). The first call of an input shape, and any
        call with ``learn`` (the FLOP-measured one), runs eagerly and every block reports its
        token count and residual through :meth:`learned`.
        """
        self.rows_host, self.rows, self.used = rows, rows_tensor, False
        self.route = None
        if not self.layouts or not self.active:
            return
        key = self._shape_key = self._key(shape)
        if key not in self.tokens_by_shape or learn:
            self.block_tokens = self.tokens_by_shape.setdefault(key, {})
            self.route = BlockRoute({}, learning=True)
            return
        self.block_tokens = self.tokens_by_shape[key]
        if not record or not self.keep_residuals:
            return
        jobs: dict[str, BlockJob] = {}
        for name, n in self.block_tokens.items():
            if not self._prunable(name, n):
                continue
            job = BlockJob(n)
            if plan is not None:
                self._plan_job(job, name, plan)
            jobs[name] = job
        self.route = BlockRoute(jobs)

    @property
    def learning(self) -> bool:
        """Whether the call being prepared must run eagerly (see :meth:`begin_call`)."""
        return self.route is not None and self.route.learning

    def _plan_job(self, job: BlockJob, name: str, plan: TokenPlan) -> None:
        """Token indices and cached residuals for a block the plan prunes (else: run in full)."""
        cache = self.caches.get(name)
        if cache is None or cache.shape[0] != self.step_rows or cache.shape[1] != job.n_tokens:
            return
        placed = self.placement(name, job.n_tokens, self.latent_grid) if self.latent_grid is not None else None
        if placed is None:
            return
        grid, job.others = placed
        idx = plan.indices(grid)
        if idx is None:
            return
        job.idx = idx
        job.shared_idx = plan.shared_indices(grid) if name in self.with_token_args else None
        trailing = name in self.other_tokens and self.other_tokens[name].where == "trailing"
        job.hidden_idx = _with_others(idx, job.grid_tokens, job.others, trailing)
        job.shared_hidden_idx = (None if job.shared_idx is None
                                 else _with_others(job.shared_idx, job.grid_tokens, job.others, trailing))
        job.k = idx.shape[-1]
        job.residual_in = cache if self.rows is None else cache.index_select(0, self.rows)

    def _prunable(self, name: str, n: int) -> bool:
        """Whether block ``name`` can ever run partially under the config (so needs a cache):
        with ``highest_only``, the blocks with the most grid tokens (unknown counts: kept)."""
        if not self.highest_only:
            return True
        counts = {block: self._grid_count(block, tokens_seen) for block, tokens_seen in self.block_tokens.items()}
        mine = self._grid_count(name, n)
        return mine is None or mine >= max((c for c in counts.values() if c is not None), default=0)

    def _grid_count(self, name: str, n: int) -> int | None:
        """Grid tokens among block ``name``'s n hidden tokens, or None while it cannot be told."""
        others = self._other_count(name, n, self.latent_grid)
        return None if others is None else n - others

    # ------------------------------------------------------------------ after the network
    def end_call(self, ran: bool = True) -> None:
        """After a network call (``ran``): store the residuals the blocks left on their jobs,
        and account every block's tokens."""
        route, self.route = self.route, None
        if ran and self.layouts and self.active and (route is None or not route.learning):
            batch = len(self.rows_host) if self.rows_host is not None else self.step_rows
            jobs = route.jobs if route is not None else {}
            relearn = False
            for name, n in self.block_tokens.items():
                job = jobs.get(name)
                relearn = relearn or (job is not None and job.mismatch)
                if job is None or job.residual_out is None:
                    self._account(name, n, n, batch, None)
                    continue
                self._store(name, job.residual_out.detach())
                job.residual_out = job.residual_in = None
                if job.idx is not None:
                    self.used = True
                    self._account(name, n, job.k + job.others, batch, self._block_flops(name))
                else:
                    self._account(name, n, n, batch, None)
            if relearn:  # a block's token count changed (other tokens follow the prompt): learn it again
                self.tokens_by_shape.pop(self._shape_key, None)
        elif ran and route is not None:
            self._drop_unprunable()
        self.rows = self.rows_host = None

    @torch.compiler.disable
    def learned(self, name: str, hidden: torch.Tensor, out: torch.Tensor) -> None:
        """A block's forward on the eager first call of a shape: its token count, its residual."""
        n = hidden.shape[1]
        self.block_tokens[name] = n
        if self.keep_residuals:
            self._store(name, (out - hidden).detach())
        self._account(name, n, n, hidden.shape[0], None)

    def _drop_unprunable(self) -> None:
        """After a learning call: residuals only for the blocks that can be pruned."""
        for name in [name for name in self.caches if not self._prunable(name, self.block_tokens.get(name, 0))]:
            del self.caches[name]

    def _store(self, name: str, residual: torch.Tensor) -> None:
        """Keep each computed row's residual (every token of the call's rows), at its row of the step."""
        rows, rows_host = self.rows, self.rows_host
        if rows is None:
            self.caches[name] = residual
            return
        cache = self.caches.get(name)
        if cache is None or cache.shape[1:] != residual.shape[1:]:
            if rows_host == list(range(len(rows_host))):
                self.caches[name] = residual
            return  # otherwise no cache for the rows before these yet: the next full call creates it
        if cache.shape[0] <= rows_host[-1]:
            if rows_host == list(range(cache.shape[0], cache.shape[0] + len(rows_host))):
                self.caches[name] = torch.cat([cache, residual])  # the next stream of the first step
            return
        cache.index_copy_(0, rows, residual.to(cache.dtype))


def _with_others(idx: torch.Tensor, grid_tokens: int, others: int, trailing: bool) -> torch.Tensor:
    """Grid-token indices (k,) or (B, k) as indices into hidden states that also hold ``others``
    other tokens, in front of the grid's (``trailing`` False) or after them: those included."""
    if not others:
        return idx
    if trailing:
        rest = torch.arange(grid_tokens, grid_tokens + others, device=idx.device, dtype=idx.dtype)
        return torch.cat([idx, rest.expand(*idx.shape[:-1], others)], dim=-1)
    front = torch.arange(others, device=idx.device, dtype=idx.dtype)
    return torch.cat([front.expand(*idx.shape[:-1], others), idx + others], dim=-1)
