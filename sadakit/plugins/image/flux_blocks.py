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
        session = self.session
        original = self.fn_ref.original_forward
        kw = dict(zip(_ARG_ORDER, args))
        kw.update(kwargs)
        hidden = kw["hidden_states"]
        text = kw["encoder_hidden_states"]
        n = hidden.shape[1]
        rows = session.active_rows
        idx = self._indices(n, text.shape[1], kw.get("image_rotary_emb"))
        if idx is None:
            counter = session.flop_counter
            before = counter.get_total_flops() if counter is not None else 0
            out = original(**kw)
            if counter is not None:
                session.record_block_flops(self.name, float(counter.get_total_flops() - before))
            session.block_tokens[self.name] = n
            if session.config.token_sparsity:
                self._store(hidden, out[1], rows)
            session.account_block(self.name, n, n, hidden.shape[0], None)
            return out
        t_len = text.shape[1]
        h_sel = hidden.index_select(1, idx)
        rotary = kw.get("image_rotary_emb")
        if rotary is not None:
            positions = torch.cat([torch.arange(t_len, device=idx.device), idx + t_len])
            rotary = tuple(r.index_select(0, positions.to(r.device)) for r in rotary)
        text_out, img_sel_out = original(**{**kw, "hidden_states": h_sel, "image_rotary_emb": rotary})
        cache = session.block_caches[self.name]
        residual = cache if rows is None else cache.index_select(0, rows)
        residual = residual.index_copy(1, idx, (img_sel_out - h_sel).to(residual.dtype))
        img_out = hidden + residual.to(hidden.dtype)
        if rows is None:
            session.block_caches[self.name] = residual
        else:
            cache.index_copy_(0, rows, residual)
        session.account_block(self.name, n, idx.numel(), hidden.shape[0], session.block_flops(self.name))
        return text_out, img_out

    def _indices(self, n: int, t_len: int, rotary: Any) -> torch.Tensor | None:
        """The (k,) kept image tokens, or None to run the block in full."""
        session = self.session
        plan = session.token_plan
        state = session.state
        cache = session.block_caches.get(self.name)
        if plan is None or state is None or state.latent_grid is None or cache is None:
            return None
        if cache.shape[0] != state.batch_size or cache.shape[1] != n:
            return None
        if rotary is not None and rotary[0].shape[0] != t_len + n:
            return None  # a layout this hook does not know (extra reference tokens): compute fully
        grid = tokens.grid_for_tokens(state.latent_grid, n, max_levels=0)
        if grid is None:
            return None
        return plan.shared_indices(grid)
