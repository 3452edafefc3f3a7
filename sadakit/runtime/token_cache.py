"""Token-wise sparsity inside blocks: which tokens a block computes, and the residual cache
that fills in the others.

The cache holds, per row of the step (call streams side by side), each token's last residual
``block(h) - h``, so a pruned token follows its current input instead of freezing at an old
output. ``TokenBlockHook`` calls in here from inside the (possibly compiled) network forward;
every entry point is eager, so the plan's objects never reach a compiled graph.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..core import tokens
from ..spec import TokenBlockSpec
from .plans import Grid, TokenPlan

#: (block name, tokens, tokens computed, rows, FLOPs of the full block or None)
BlockAccount = Callable[[str, int, int, int, "float | None"], None]


class TokenCache:
    """Residual caches and the current call's token plan, for every eligible block."""

    def __init__(self, blocks: list[TokenBlockSpec], keep_residuals: bool, highest_only: bool,
                 account: BlockAccount, block_flops: Callable[[str], "float | None"]) -> None:
        self.layouts = {b.name: b.layout for b in blocks}
        self.keep_residuals = keep_residuals
        #: ``token_resolutions="highest"``: only the blocks with the most tokens are ever pruned,
        #: so only theirs need a residual cache
        self.highest_only = highest_only
        self._account = account
        self._block_flops = block_flops
        self.caches: dict[str, torch.Tensor] = {}
        self.block_tokens: dict[str, int] = {}  # name -> tokens it saw on a full call
        # set for the duration of one network call
        self.plan: TokenPlan | None = None
        self.rows: torch.Tensor | None = None  # the call's rows among the step's; None: all of them
        self.rows_host: list[int] | None = None
        self.used = False  # a block ran on a token subset during this call
        self.step_rows = 0  # rows of a full step (for cache shapes)
        self.latent_grid: Grid | None = None

    def clear(self) -> None:
        self.caches.clear()
        self.end_call()
        self.latent_grid = None

    def begin_call(self, plan: TokenPlan | None, rows: list[int] | None, rows_tensor: torch.Tensor | None) -> None:
        """The call's token plan and its rows among the step's (None: all of them)."""
        self.plan = plan
        self.rows_host = rows
        self.rows = rows_tensor
        self.used = False

    def end_call(self) -> None:
        self.plan = None
        self.rows = self.rows_host = None

    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.caches.values())

    def grid_of(self, name: str, n_tokens: int, latent_grid: Grid) -> Grid | None:
        """The grid block ``name``'s N tokens lie on, by its layout; None if none matches."""
        levels = 0 if self.layouts.get(name) == "exact" else 6
        return tokens.grid_for_tokens(latent_grid, n_tokens, max_levels=levels)

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
            grid = self.grid_of(name, n, latent_grid)
            if grid is None:
                unmatched.append(f"{name} ({n} tokens)")
            else:
                by_grid[grid] = n
        if unmatched:
            shown = ", ".join(unmatched[:3]) + (f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else "")
            note(f"token sparsity inactive in block(s) {shown}: their token count matches no grid of the "
                 f"latent's token grid {latent_grid} (layouts: see TokenBlockSpec.layout)")
        grids = sorted(by_grid, key=lambda g: -by_grid[g])
        return grids[:1] if highest_only else grids

    # ------------------------------------------------------------------ called by TokenBlockHook
    @torch.compiler.disable
    def selection(self, name: str, n_tokens: int, shared: bool) -> torch.Tensor | None:
        """The tokens block ``name`` computes on this call: (B, k), or (k,) for every row when
        ``shared`` (a per-token argument without rows); None to run the block in full."""
        plan = self.plan
        if plan is None or self.latent_grid is None:
            return None
        cache = self.caches.get(name)
        if cache is None or cache.shape[0] != self.step_rows or cache.shape[1] != n_tokens:
            return None
        grid = self.grid_of(name, n_tokens, self.latent_grid)
        if grid is None:
            return None
        idx = plan.shared_indices(grid) if shared else plan.indices(grid)
        if idx is not None:
            self.used = True
        return idx

    @torch.compiler.disable
    def computed(self, name: str, hidden: torch.Tensor, out: torch.Tensor) -> None:
        """A full block forward: its token count, and the residuals for later partial calls."""
        n = hidden.shape[1]
        self.block_tokens[name] = n
        if self.keep_residuals and self._prunable(name, n):
            self._store(name, (out - hidden).detach())
        self._account(name, n, n, hidden.shape[0], None)

    def _prunable(self, name: str, n: int) -> bool:
        """Whether block ``name`` can ever run partially under the config (so needs a cache)."""
        if not self.highest_only:
            return True
        most = max(self.block_tokens.values())
        if n < most:
            self.caches.pop(name, None)
            return False
        for other in [o for o, c in self.block_tokens.items() if c < most and o in self.caches]:
            del self.caches[other]  # a block with more tokens appeared: the smaller ones are never pruned
        return True

    def _store(self, name: str, residual: torch.Tensor) -> None:
        """Keep each computed row's residual, at its row of the step."""
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

    @torch.compiler.disable
    def merged(self, name: str, hidden: torch.Tensor, idx: torch.Tensor, h_sel: torch.Tensor,
               out_sel: torch.Tensor) -> torch.Tensor:
        """The block's output on every token: computed ones from ``out_sel``, the others
        input + cached residual; the cache takes the new residuals."""
        rows = self.rows
        cache = self.caches[name]
        residual = cache if rows is None else cache.index_select(0, rows)
        delta = (out_sel - h_sel).to(residual.dtype)
        if idx.dim() == 1:
            residual = residual.index_copy(1, idx, delta)
        else:
            residual = residual.scatter(1, idx.unsqueeze(-1).expand(-1, -1, residual.shape[-1]), delta)
        out = hidden + residual.to(hidden.dtype)
        if rows is None:
            self.caches[name] = residual
        else:
            cache.index_copy_(0, rows, residual)
        self._account(name, hidden.shape[1], idx.shape[-1], hidden.shape[0], self._block_flops(name))
        return out
