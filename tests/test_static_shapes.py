"""``SADAConfig.static_shapes``: few distinct shapes per generation, for CUDA graphs.

Under ``torch.compile(mode="reduce-overhead")`` every new input shape records a new CUDA
graph. Partial calls round their token count up to a bucket and steps compute all rows or
none, so a block sees at most ``len(TOKEN_BUCKETS) + 1`` token counts in a generation.
"""

import math

import diffusers
import torch

import sadakit
from sadakit.config import TOKEN_BUCKETS
from sadakit.core.parameterization import NoiseLevel
from sadakit.runtime.plans import CallPlan, TokenPlan
from sadakit.runtime.session import _with_static_shapes
from sadakit.testing import tiny_flux_pipeline

from plugin_checks import psnr


def _token_plan(k: int, grid=(6, 8), rows=2) -> TokenPlan:
    n = math.prod(grid)
    scores = torch.rand(rows, n)
    required = torch.zeros(rows, n, dtype=torch.bool)
    required[:, torch.randperm(n)[:k]] = True
    return TokenPlan({grid: scores}, {grid: required}, {grid: k}, {grid: [k + 1]})


def test_token_counts_round_up_to_the_next_bucket_and_keep_every_required_token():
    n = 48
    buckets = sorted(math.ceil(f * n) for f in TOKEN_BUCKETS)  # 12, 24, 36
    for k in range(1, n + 1):
        plan = _token_plan(k).bucketed(TOKEN_BUCKETS)
        expected = next((b for b in buckets if b >= k), n)
        assert plan.k[(6, 8)] == expected
        assert plan.shared_k[(6, 8)] == [next((b for b in buckets if b >= k + 1), n)]
        idx = plan.indices((6, 8))
        assert idx.shape == (2, expected)
        required = plan.required[(6, 8)]
        for row in range(2):  # the required tokens are all there; the rest are the least stable others
            assert set(required[row].nonzero().flatten().tolist()) <= set(idx[row].tolist())


def test_a_mixed_step_computes_every_row_and_a_partial_one_is_bucketed():
    lvl = NoiseLevel(*(torch.tensor(0.5) for _ in range(4)))
    x = torch.randn(4, 3)
    mixed = CallPlan(lvl, x, [0, 2], [1], torch.randn(4, 3), _token_plan(5), 0.5)
    static = _with_static_shapes(mixed)
    assert static.computed_groups == [0, 1, 2] and static.skipped_groups == [] and static.token_plan is None
    partial = CallPlan(lvl, x, [0, 1], [], None, _token_plan(5), 0.5)
    assert _with_static_shapes(partial).token_plan.k == {(6, 8): 12}
    skipped = CallPlan(lvl, x, [], [0, 1], torch.randn(4, 3), None, 0.5)
    assert _with_static_shapes(skipped) is skipped


def _block_token_counts(static: bool):
    pipe = tiny_flux_pipeline()
    # random-weight flow trajectories look unstable everywhere to the deterministic criterion;
    # the stochastic sampler's noise gives stable tokens to prune (as in the Flux tests)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                          stochastic_sampling=True)
    kw = dict(prompt=["a red square", "a blue circle"], height=128, width=128, num_inference_steps=20,
              max_sequence_length=16, output_type="pt")
    seed = int(torch.randint(0, 2**31 - 1, ()))
    torch.manual_seed(seed)  # the stochastic sampler draws its noise from the global generator
    base = pipe(generator=torch.Generator().manual_seed(seed), **kw).images
    sadakit.accelerate(pipe, sadakit.SADAConfig(skip_steps=False, max_token_fraction=1.0, static_shapes=static))
    seen: list[tuple[int, int]] = []
    block = pipe.transformer.transformer_blocks[0]
    handle = block.norm1.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[:2])))
    try:
        torch.manual_seed(seed)
        out = pipe(generator=torch.Generator().manual_seed(seed), **kw).images
    finally:
        handle.remove()
    report = sadakit.report(pipe)
    sadakit.remove(pipe)
    return seen, report, psnr(out, base)


def test_a_block_sees_at_most_one_shape_per_bucket_in_a_generation():
    dynamic, dynamic_report, dynamic_fidelity = _block_token_counts(static=False)
    static, report, fidelity = _block_token_counts(static=True)
    n = 64  # 128 x 128 pixels: an 8 x 8 packed token grid
    assert report.partial_calls >= 5, report.decisions
    assert len(set(static)) <= len(TOKEN_BUCKETS) + 1, sorted(set(static))
    assert {tokens for _, tokens in static} <= {math.ceil(f * n) for f in TOKEN_BUCKETS} | {n}
    assert {rows for rows, _ in static} == {2}  # the batch never shrinks
    assert len({tokens for _, tokens in dynamic}) > len({tokens for _, tokens in static})
    # rounding up only computes more tokens: at least as many as without buckets
    assert report.tokens_computed >= dynamic_report.tokens_computed
    assert fidelity > 25 and dynamic_fidelity > 25
