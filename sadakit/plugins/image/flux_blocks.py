"""Token-wise sparsity inside Flux's double-stream and single-stream blocks.

Both block types are called as ``block(hidden_states=img, encoder_hidden_states=txt, temb=...,
image_rotary_emb=(cos, sin), joint_attention_kwargs=...)`` and return ``(txt, img)``. Their
attention runs on the sequence [text, image] (double-stream: text queries/keys concatenated in
front of the image ones; single-stream: the block concatenates the two streams itself) with
one rotary table of T + N rows in that order.

On a partial call the hook:

* keeps every text token (they condition every image token; there are few of them),
* gathers the selected image tokens, and the rotary rows ``[0..T) + (T + idx)`` so every kept
  token keeps its own 2-D position,
* runs the block on [text, selected image] (pruned tokens serve neither as queries nor as
  keys/values, as in the UNet hook), and
* fills pruned image tokens with ``input + cached residual`` (the residual the block added to
  that token the last time it was computed), so they follow their current input.

Rows of one call share one index set: the rotary table has no batch dimension
(``apply_rotary_emb`` broadcasts (S, D) over the batch), so the kept set is the union of the
rows' required tokens (``TokenPlan.shared_indices``); with one row it is that row's set.
"""

from __future__ import annotations

from typing import Any

import torch

from ...core import tokens
from ...runtime.hooks import TokenBlockHook

_ARG_ORDER = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb", "joint_attention_kwargs")


class FluxTokenBlockHook(TokenBlockHook):
    """Partial compute of image tokens in a Flux block; text tokens always complete."""

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        # traced under torch.compile; the session is touched only in the eager helpers
        original = self.fn_ref.original_forward
        kw = dict(zip(_ARG_ORDER, args))
        kw.update(kwargs)
        hidden = kw["hidden_states"]
        text = kw["encoder_hidden_states"]
        rotary = kw.get("image_rotary_emb")
        idx = self._flux_indices(hidden.shape[1], text.shape[1], None if rotary is None else rotary[0].shape[0])
        if idx is None:
            before = self._flops_before()
            out = original(**kw)
            self._after_full(hidden, out, before, block_output=out[1])
            return out
        t_len = text.shape[1]
        h_sel = hidden.index_select(1, idx)
        if rotary is not None:
            positions = torch.cat([torch.arange(t_len, device=idx.device), idx + t_len])
            rotary = tuple(r.index_select(0, positions.to(r.device)) for r in rotary)
        text_out, img_sel_out = original(**{**kw, "hidden_states": h_sel, "image_rotary_emb": rotary})
        return text_out, self._merge_image(hidden, idx, h_sel, img_sel_out)

    @torch.compiler.disable
    def _merge_image(self, hidden: torch.Tensor, idx: torch.Tensor, h_sel: torch.Tensor, img_sel_out: torch.Tensor) -> torch.Tensor:
        session = self.session
        rows = session.active_rows
        cache = session.block_caches[self.name]
        residual = cache if rows is None else cache.index_select(0, rows)
        residual = residual.index_copy(1, idx, (img_sel_out - h_sel).to(residual.dtype))
        img_out = hidden + residual.to(hidden.dtype)
        if rows is None:
            session.block_caches[self.name] = residual
        else:
            cache.index_copy_(0, rows, residual)
        n = hidden.shape[1]
        session.account_block(self.name, n, idx.numel(), hidden.shape[0], session.block_flops(self.name))
        return img_out

    @torch.compiler.disable
    def _flux_indices(self, n: int, t_len: int, rotary_rows: int | None) -> torch.Tensor | None:
        """The (k,) kept image tokens, or None to run the block in full."""
        session = self.session
        plan = session.token_plan
        state = session.state
        cache = session.block_caches.get(self.name)
        if plan is None or state is None or state.latent_grid is None or cache is None:
            return None
        if cache.shape[0] != state.batch_size or cache.shape[1] != n:
            return None
        if rotary_rows is not None and rotary_rows != t_len + n:
            return None  # a layout this hook does not know (extra reference tokens): compute fully
        grid = tokens.grid_for_tokens(state.latent_grid, n, max_levels=0)
        if grid is None:
            return None
        return plan.shared_indices(grid)
