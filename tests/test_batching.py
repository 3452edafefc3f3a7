"""Row selection for partial denoiser calls."""

from __future__ import annotations

import torch

from sadakit.runtime.batching import scatter_rows, select_rows


def test_select_rows_slices_batched_tensors_and_skips_named_arguments():
    batch = 4
    kwargs = {
        "hidden_states": torch.randn(batch, 16, 8),
        "img_ids": torch.randn(batch, 3),  # leading size equals the batch by coincidence
        "added": {"text_embeds": torch.randn(batch, 5), "time_ids": torch.randn(batch, 6)},
        "timestep": torch.tensor(3.0),
        "scale": 1.5,
    }
    rows = torch.tensor([0, 2])
    out = select_rows(kwargs, rows, batch, skip=frozenset({"img_ids"}))
    assert torch.equal(out["hidden_states"], kwargs["hidden_states"][[0, 2]])
    assert out["img_ids"] is kwargs["img_ids"]
    assert torch.equal(out["added"]["time_ids"], kwargs["added"]["time_ids"][[0, 2]])
    assert out["timestep"] is kwargs["timestep"] and out["scale"] == 1.5
    # without the skip the coincidence would slice the ids
    assert select_rows(kwargs, rows, batch)["img_ids"].shape == (2, 3)


def test_scatter_rows_places_results_and_zeros_the_rest():
    part = torch.randn(2, 3)
    full = scatter_rows((part,), torch.tensor([1, 3]), 4)[0]
    assert torch.equal(full[[1, 3]], part) and torch.equal(full[[0, 2]], torch.zeros(2, 3))
