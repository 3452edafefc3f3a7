"""SADA on Stable Audio Open (tiny, random weights), through the public plugin contract:
v-prediction on the cosine scheduler's EDM-style sigma schedule (the transformer fed
atan(sigma) * 2 / pi), CFG batched into one call, (B, C, T) latents on a 1-D time grid, token
sparsity over time with the prepended global token always computed.

Real forwards are counted with a pre-hook on the transformer's first projection
(``preprocess_conv``), never from sadakit's report alone.
"""

import diffusers
import pytest
import torch

import sadakit
from sadakit.errors import UnsupportedPipelineError
from sadakit.plugins.audio import stable_audio
from sadakit.testing.dit_pipelines_2 import cosine_dpm_solver, tiny_stable_audio_pipeline
from plugin_checks import Forwards, plain, psnr


@pytest.fixture(scope="module")
def sa_pipe():
    return tiny_stable_audio_pipeline()


@pytest.fixture
def sa(sa_pipe):
    yield from plain(sa_pipe)


def run(pipe, steps=30, seed=0, guidance_scale=7.0, batch=1, output_type="pt"):
    torch.manual_seed(seed)  # in case the SDE solver's noise comes from the global generator
    return pipe(prompt=["a drum loop"] * batch, negative_prompt=["noise"] * batch, audio_end_in_s=1.0,
                num_inference_steps=steps, guidance_scale=guidance_scale, output_type=output_type,
                generator=torch.Generator().manual_seed(seed)).audios


@pytest.mark.parametrize("batch", [1, 2])
def test_stable_audio_skips_calls_with_batched_cfg_and_remove_restores(sa, batch):
    base = run(sa, batch=batch)
    other_seed = run(sa, seed=1, batch=batch)
    forwards = Forwards(sa.transformer.preprocess_conv)
    try:
        sadakit.accelerate(sa)
        out = run(sa, batch=batch)
    finally:
        forwards.close()
    rep = sadakit.report(sa)
    assert rep.family == "stable-audio"
    assert rep.denoiser_calls == 30 and rep.batch_size == 2 * batch  # [uncond..., cond...] in one call
    assert rep.network_calls == forwards.count < 30, rep.decisions
    assert rep.skipped_calls == 30 - forwards.count
    # rows really run = rows not skipped (two prompts may skip apart: calls on some rows only,
    # the rotary table left whole)
    assert forwards.rows == 30 * 2 * batch - sum(rep.per_sample_skipped)
    assert rep.per_sample_skipped[:batch] == rep.per_sample_skipped[batch:]  # CFG halves decide together
    assert out.shape == base.shape == (batch, 2, 128) and torch.isfinite(out).all()
    # the solver is stochastic (SDE DPM-Solver++): a skipped call's extrapolated x0 meets fresh
    # step noise, so the tiny model's waveform stays close but not as close as an ODE's
    close, apart = psnr(out, base), psnr(other_seed, base)
    assert close > 22 and close > apart + 8, (close, apart)
    sadakit.remove(sa)
    assert torch.equal(run(sa, batch=batch), base)


def test_stable_audio_without_cfg(sa):
    sadakit.accelerate(sa)
    out = run(sa, guidance_scale=1.0)
    rep = sadakit.report(sa)
    assert rep.denoiser_calls == 30 and rep.batch_size == 1 and rep.skipped_calls > 0
    assert torch.isfinite(out).all()


def test_parameterization_is_the_schedulers_own_x0_at_every_step():
    sched = cosine_dpm_solver(sigma_min=0.3, sigma_max=500, sigma_data=1.0, prediction_type="v_prediction")
    sched.set_timesteps(30)
    pipe = type("P", (), {"scheduler": sched})()
    param = stable_audio.stable_audio_parameterization(pipe)
    x, v = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    for i, t in enumerate(sched.timesteps):
        sched._step_index = i
        x_model = sched.scale_model_input(x, t)  # what the transformer is fed: c_in * x
        lvl = param.level(t.unsqueeze(0), x.device)  # the pipeline passes t.unsqueeze(0)
        expected = sched.convert_model_output(v, sample=x)  # precondition_outputs(x, v, sigma)
        torch.testing.assert_close(param.x0_from_output(x_model, v, lvl), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(param.output_from_x0(x_model, expected, lvl), v, rtol=1e-3, atol=1e-3)
        sigma = sched.sigmas[i].float()
        torch.testing.assert_close(lvl.tau, sigma / (1 + sigma), rtol=1e-4, atol=1e-6)


def test_another_scheduler_is_refused_before_anything_changes(sa):
    sa.scheduler = diffusers.EDMDPMSolverMultistepScheduler()
    with pytest.raises(UnsupportedPipelineError, match="CosineDPMSolverMultistepScheduler"):
        sadakit.accelerate(sa)
    assert not sadakit.is_accelerated(sa)


def test_sample_prediction_is_refused(sa):
    sa.scheduler = cosine_dpm_solver(prediction_type="sample")
    with pytest.raises(UnsupportedPipelineError, match="prediction_type='sample'"):
        sadakit.accelerate(sa)
    assert not sadakit.is_accelerated(sa)


class BlockTokens:
    """Tokens each block computes, seen inside it (``norm1``, after sadakit's selection), the
    first token the block is given (before the selection) and computes, and the rows of the
    rotary table its self-attention receives."""

    def __init__(self, pipe):
        self.seen, self.rotary, self.given_first, self.computed_first = [], [], [], []
        blocks = pipe.transformer.transformer_blocks
        self._handles = [b.norm1.register_forward_pre_hook(self._hidden) for b in blocks]
        self._handles += [b.register_forward_pre_hook(self._given, with_kwargs=True) for b in blocks]
        self._handles += [b.attn1.register_forward_pre_hook(self._rotary, with_kwargs=True) for b in blocks]

    def _given(self, module, args, kwargs):
        self.given_first.append(kwargs["hidden_states"][:, 0].clone())

    def _hidden(self, module, args):
        self.seen.append(args[0].shape[1])
        self.computed_first.append(args[0][:, 0].clone())

    def _rotary(self, module, args, kwargs):
        self.rotary.append(kwargs["rotary_emb"][0].shape[0])

    def close(self):
        for h in self._handles:
            h.remove()


def test_partial_calls_over_time_keep_the_global_token(sa):
    base = run(sa)
    full = BlockTokens(sa)
    try:
        run(sa, steps=1)
    finally:
        full.close()
    tokens = full.seen[0] - 1  # the latent's time steps; the blocks also see the global token
    sadakit.accelerate(sa, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0))
    seen = BlockTokens(sa)
    try:
        out = run(sa)
    finally:
        seen.close()
    rep = sadakit.report(sa)
    blocks = len(sa.transformer.transformer_blocks)
    assert rep.partial_calls >= 2 and rep.network_calls == 30, rep.decisions
    assert max(seen.seen) == tokens + 1 and min(seen.seen) < tokens + 1
    assert seen.rotary == seen.seen  # the rotary rows follow: the global token's and the kept ones
    # the global token (first of the sequence) is computed in every block on every call
    assert all(torch.equal(g, c) for g, c in zip(seen.given_first, seen.computed_first, strict=True))
    # both CFG rows share one token set (the rotary table has no rows); the global token is counted
    assert rep.tokens_computed == 2 * sum(seen.seen) < rep.tokens_total == 30 * blocks * (tokens + 1) * 2
    assert not [n for n in rep.notes if "matches no grid" in n], rep.notes
    assert torch.isfinite(out).all() and psnr(out, base) > 22, psnr(out, base)
    sadakit.remove(sa)
    assert torch.equal(run(sa), base)


def test_a_partial_call_keeping_every_token_is_the_full_call(sa):
    base = run(sa, batch=2)
    sadakit.accelerate(sa, sadakit.SADAConfig.criterion_only(skip_steps=False, max_token_fraction=1.0,
                                                              anchor_window=1))
    out = run(sa, batch=2)
    rep = sadakit.report(sa)
    assert rep.partial_calls >= 20 and rep.tokens_computed == rep.tokens_total, rep.decisions
    torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-5)


def test_output_kind_is_audio(sa):
    assert stable_audio.plugin.sadakit_output_kind(sa) == "audio"
    assert "StableAudioPipeline" in stable_audio.plugin.sadakit_supported_pipelines()
