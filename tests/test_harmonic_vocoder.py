"""The harmonic vocoder renders the pitch it is given, at any frequency, with continuous phase;
a hop-strided convolutional vocoder (MusicLDM's ``SpeechT5HifiGan``) cannot, whatever its
weights: that is why the bundled notes model ships the former."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from sadakit.bundled import data_notes
from sadakit.bundled.harmonic_vocoder import HarmonicVocoder

SR, HOP = 16000, 160


def small_vocoder(**overrides) -> HarmonicVocoder:
    config = dict(model_in_dim=16, sampling_rate=SR, upsample_rates=(HOP,), n_harmonics=8, hidden_channels=16,
                  dilations=(1, 2), f0_min=100.0, f0_max=1000.0)
    config.update(overrides)
    return HarmonicVocoder(**config).eval()


def test_hop_strided_vocoder_is_periodic_in_the_hop() -> None:
    """A random-weight SpeechT5HifiGan (strides 8*5*4 = 160) on constant mel frames: its output
    repeats every 160 samples away from the edges, so it can only hold multiples of 100 Hz."""
    torch.manual_seed(0)
    hifigan = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=16, sampling_rate=SR, upsample_initial_channel=32, upsample_rates=(8, 5, 4),
        upsample_kernel_sizes=(16, 11, 8), resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3),),
        normalize_before=False, initializer_range=0.1,
    )).eval()
    frame = torch.randn(16)
    with torch.no_grad():
        out = hifigan(frame.expand(64, 16).clone())
    interior = out[20 * HOP : 44 * HOP]
    assert interior.abs().max() > 1e-3
    torch.testing.assert_close(interior[HOP:], interior[:-HOP], atol=1e-5 * interior.abs().max().item(), rtol=0)


def test_oscillator_matches_a_float64_reference_at_any_pitch() -> None:
    """Steady controls at a fresh random pitch (not a multiple of the 100 Hz frame rate) give
    exactly the sum of sines with phase accumulated sample by sample."""
    vocoder = small_vocoder()
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    f0 = 150 + 700 * torch.rand(3, generator=g, dtype=torch.float64)
    amps = torch.rand(3, 8, generator=g, dtype=torch.float64)
    frames = 40
    with torch.no_grad():
        out = vocoder.synthesize(f0.float()[:, None].expand(3, frames), amps.float()[:, None, :].expand(3, frames, 8))
    n = torch.arange(1, frames * HOP + 1, dtype=torch.float64)  # the phase has advanced one sample at n = 0
    k = torch.arange(1, 9, dtype=torch.float64)
    audible = (k[None, :] * f0[:, None] < SR / 2).double()
    reference = ((amps * audible)[:, None, :] * torch.sin(2 * math.pi * f0[:, None, None] * k * n[None, :, None] / SR)).sum(-1)
    torch.testing.assert_close(out.double(), reference, atol=2e-4 * amps.sum().item(), rtol=0)
    measured = data_notes.measure_pitch(vocoder.synthesize(f0.float()[:, None].expand(3, frames),
                                                           torch.nn.functional.one_hot(torch.zeros(3, frames, dtype=torch.long), 8).float()))
    assert data_notes.semitone_error(measured, f0.float()).abs().max() < 0.05, (measured, f0)


def test_gliding_pitch_keeps_the_phase_continuous() -> None:
    """A glide across frames: no jump larger than one sample's worth of the top frequency."""
    vocoder = small_vocoder()
    f0 = torch.linspace(220.0, 880.0, 30)[None]
    amps = torch.zeros(1, 30, 8)
    amps[..., 0] = 1.0
    with torch.no_grad():
        out = vocoder.synthesize(f0, amps)[0]
    assert out.diff().abs().max() <= 2 * math.pi * 880.0 / SR * 1.01


def test_harmonics_above_nyquist_are_silent() -> None:
    vocoder = small_vocoder(f0_max=7000.0)
    amps = torch.zeros(1, 20, 8)
    amps[..., :2] = 1.0  # 3 kHz is audible, its 6 kHz harmonic too; at 5 kHz the second is 10 kHz
    with torch.no_grad():
        low = vocoder.synthesize(torch.full((1, 20), 3000.0), amps)[0]
        high = vocoder.synthesize(torch.full((1, 20), 5000.0), amps)[0]
    assert low.abs().max() > 1.5
    assert high.abs().max() <= 1.0 + 1e-5


def test_controls_mask_inaudible_harmonics_and_respect_the_f0_range() -> None:
    vocoder = small_vocoder()
    torch.manual_seed(1)
    f0, amps = vocoder.controls(3 * torch.randn(2, 12, 16))
    assert f0.shape == (2, 12) and amps.shape == (2, 12, 8)
    assert (f0 >= 100.0).all() and (f0 <= 1000.0).all()
    k = torch.arange(1, 9)
    assert (amps[(k * f0[..., None]) >= SR / 2] == 0).all()


def test_forward_is_batched_and_unbatched_like_speecht5_hifigan() -> None:
    vocoder = small_vocoder()
    mel = torch.randn(3, 10, 16)
    with torch.no_grad():
        batched = vocoder(mel)
        single = vocoder(mel[1])
    assert batched.shape == (3, 10 * HOP) and single.shape == (10 * HOP,)
    torch.testing.assert_close(single, batched[1], atol=1e-4, rtol=0)


def test_half_precision_model_keeps_float32_oscillators() -> None:
    """A float16 vocoder (a pipeline loaded with ``torch_dtype=float16``) sounds like the
    float32 one: only the network runs in half precision, not the phase arithmetic."""
    vocoder = small_vocoder()
    f0 = 150 + 800 * torch.rand(1, 50)  # the f0 head returns float32 in a half model too
    amps = torch.rand(1, 50, 8).half().float()
    mel = torch.randn(2, 12, 16)
    with torch.no_grad():
        full = vocoder.synthesize(f0, amps)
        full_f0 = vocoder.controls(mel)[0]
        vocoder.half()
        half = vocoder.synthesize(f0, amps.half())
        half_f0 = vocoder.controls(mel.half())[0]
        assert vocoder(mel.half()).dtype == torch.float16
    assert half.dtype == torch.float16 and half_f0.dtype == torch.float32
    assert (half.float() - full).abs().max() < 2e-3 * amps.sum(-1).max()
    assert data_notes.semitone_error(half_f0, full_f0).abs().max() < 0.1


def test_wrong_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(frames, 16\)"):
        small_vocoder()(torch.randn(10, 17))


@pytest.mark.parametrize("bad, match", [
    (dict(f0_max=9000.0), "f0_max"),
    (dict(f0_min=0.0), "f0_min"),
    (dict(upsample_rates=()), "upsample_rates"),
    (dict(n_harmonics=0), "n_harmonics"),
    (dict(dilations=(1, 0)), "dilations"),
])
def test_bad_config_is_refused(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        small_vocoder(**bad)


def test_save_and_load_round_trip(tmp_path) -> None:
    vocoder = small_vocoder()
    with torch.no_grad():
        vocoder.mean.normal_()
    vocoder.save_pretrained(tmp_path)
    loaded = HarmonicVocoder.from_pretrained(tmp_path).eval()
    mel = torch.randn(2, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel), vocoder(mel), atol=0, rtol=0)
    assert loaded.hop_length == HOP
