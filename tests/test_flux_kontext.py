"""SADA on Flux Kontext (tiny, random weights): latent plus reference tokens in one sequence."""

import diffusers
import pytest
import torch

import sadakit
from sadakit.testing.pipelines import _finish, _flux_parts, _seeded


@pytest.fixture(scope="module")
def kontext():
    with _seeded(0):
        parts = _flux_parts("tiny", guidance_embeds=True)
    return _finish(diffusers.FluxKontextPipeline(**parts))


def run(pipe, steps=30, **kw):
    reference = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(7))
    return pipe(prompt=["make it red"], image=reference, height=64, width=96, num_inference_steps=steps,
                max_sequence_length=16, max_area=64 * 96, _auto_resize=False, generator=torch.Generator().manual_seed(0),
                output_type="pt", **kw).images


def psnr(a, b):
    return 10 * torch.log10(1.0 / torch.mean((a - b) ** 2).clamp_min(1e-20)).item()


@pytest.mark.parametrize("true_cfg", [False, True])
def test_kontext_skips_calls_and_remove_restores(kontext, true_cfg):
    kw = dict(negative_prompt=["blurry"], true_cfg_scale=2.0) if true_cfg else {}
    base = run(kontext, **kw)
    forwards = []
    handle = kontext.transformer.x_embedder.register_forward_pre_hook(lambda m, a: forwards.append(a[0].shape[1]))
    try:
        sadakit.accelerate(kontext)
        out = run(kontext, **kw)
        rep = sadakit.report(kontext)
    finally:
        handle.remove()
        sadakit.remove(kontext)
    calls = 60 if true_cfg else 30
    assert rep.family == "flux-kontext" and rep.denoiser_calls == calls
    assert rep.network_calls == len(forwards) < calls, rep.decisions
    assert set(forwards) == {2 * 4 * 6}  # the latent's 24 tokens and the reference's 24
    assert rep.streams == (["call0", "call1"] if true_cfg else ["call0"])
    assert torch.isfinite(out).all() and psnr(out, base) > 30
    assert torch.equal(run(kontext, **kw), base)


def test_kontext_partial_calls_on_the_token_sequence(kontext):
    kontext.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        kontext.scheduler.config, stochastic_sampling=True)
    scheduler = kontext.scheduler
    try:
        sadakit.accelerate(kontext, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
        torch.manual_seed(0)
        out = run(kontext, steps=12)
        rep = sadakit.report(kontext)
    finally:
        sadakit.remove(kontext)
        kontext.scheduler = scheduler
    assert rep.partial_calls >= 1, rep.decisions
    assert rep.tokens_computed < rep.tokens_total
    assert not [n for n in rep.notes if "matches no grid" in n]
    assert torch.isfinite(out).all()
