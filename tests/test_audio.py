"""Audio: SADA on real (tiny, random-weight) MusicLDM / AudioLDM / AudioLDM2 pipelines, metrics, WAV."""

import wave

import attrs
import numpy as np
import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock

import sadakit
from sadakit.audio_io import generate_audio, read_wav, to_pcm16, write_wav
from sadakit.metrics import audio as audio_metrics
from sadakit.plugins.audio import fix_musicldm
from sadakit.plugins.audio.compat import is_musicldm_compat_applied
from sadakit.testing.pipelines import tiny_musicldm_pipeline


PROMPT = "a calm piano melody"
ODD_T_SECONDS = 0.52  # latent T = 13: odd at the top grid (13 x 16) and at the next (7 x 8)


def generate(pipe, steps=20, prompt=PROMPT, seed=0, **kw):
    return pipe(
        prompt, num_inference_steps=steps, output_type="pt",
        generator=torch.Generator().manual_seed(seed), **kw,
    ).audios


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny pipelines are overhead-bound: a second intra-op thread only spin-waits (badly so on a
    loaded machine), so this module runs single-threaded and restores the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def musicldm_pipe():
    pipe = tiny_musicldm_pipeline()
    fix_musicldm(pipe)  # the user's explicit fix: plain runs work, remove keeps it
    return pipe


@pytest.fixture
def musicldm(musicldm_pipe):
    sadakit.remove(musicldm_pipe)
    yield musicldm_pipe
    sadakit.remove(musicldm_pipe)


class CallCounter:
    """Real UNet forwards, seen by the first convolution."""

    def __init__(self, module):
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1

    def reset(self):
        self.count = 0

    def close(self):
        self._handle.remove()


@pytest.fixture
def counter(musicldm):
    c = CallCounter(musicldm.unet.conv_in)
    yield c
    c.close()


def test_disabled_and_removed_are_bit_identical(musicldm):
    base = generate(musicldm, steps=12)
    sadakit.accelerate(musicldm, sadakit.SADAConfig.disabled())
    assert torch.equal(generate(musicldm, steps=12), base)
    assert sadakit.report(musicldm).decisions == "F" * 12
    sadakit.accelerate(musicldm)
    accelerated = generate(musicldm, steps=12)
    assert sadakit.remove(musicldm) is True
    assert torch.equal(generate(musicldm, steps=12), base)
    assert torch.isfinite(accelerated).all() and not torch.equal(accelerated, base)
    assert not hasattr(musicldm.unet, "_diffusers_hook")
    assert all("forward" not in m.__dict__ for m in musicldm.unet.modules())
    assert "_encode_prompt" not in musicldm.__dict__
    assert is_musicldm_compat_applied(musicldm)  # the user's fix survives remove


def test_fewer_unet_calls_than_steps(musicldm, counter):
    sadakit.accelerate(musicldm)
    counter.reset()
    out = generate(musicldm, steps=20)
    rep = sadakit.report(musicldm)
    assert torch.isfinite(out).all()
    assert rep.family == "musicldm" and rep.denoiser_calls == 20
    assert rep.network_calls == counter.count < 20, rep.decisions
    assert rep.skipped_calls == 20 - rep.network_calls
    # CFG is on (guidance 2.5): rows 0 (uncond) and 1 (cond) decide together
    assert rep.batch_size == 2 and rep.per_sample_computed[0] == rep.per_sample_computed[1]
    assert rep.decisions[:4] == "FFFF" and rep.decisions[-2:] == "FF"


def _token_probe(unet):
    """Token counts each transformer block really computes (seen inside the block, at norm1)."""
    seen, handles = {}, []
    for name, module in unet.named_modules():
        if isinstance(module, BasicTransformerBlock):
            def hook(mod, args, kwargs, name=name):
                seen.setdefault(name, []).append(args[0].shape[1])
            handles.append(module.norm1.register_forward_pre_hook(hook, with_kwargs=True))
    return seen, handles


def test_non_square_token_grids_pruned_at_every_block_resolution(musicldm):
    config = sadakit.SADAConfig.criterion_only(token_resolutions="all", skip_steps=False)
    sadakit.accelerate(musicldm, config)
    seen, handles = _token_probe(musicldm.unet)
    try:
        out = generate(musicldm, steps=20, audio_length_in_s=ODD_T_SECONDS, guidance_scale=1.0)
    finally:
        for h in handles:
            h.remove()
    rep = sadakit.report(musicldm)
    assert torch.isfinite(out).all()
    assert rep.partial_calls >= 1, rep.decisions
    assert rep.tokens_computed < rep.tokens_total
    full_sizes = {max(v) for v in seen.values()}
    assert full_sizes == {13 * 16, 7 * 8}  # (T, F) = (13, 16) and its ceil-halved (7, 8)
    for name, sizes in seen.items():
        assert min(sizes) < max(sizes), f"{name} never computed a token subset"


def test_batch_two_prompts_and_several_waveforms_per_prompt(musicldm, counter):
    sadakit.accelerate(musicldm)
    counter.reset()
    out = generate(musicldm, steps=16, prompt=["a drum loop", "a violin"], num_waveforms_per_prompt=2)
    rep = sadakit.report(musicldm)
    assert out.shape[0] == 4 and torch.isfinite(out).all()
    assert rep.batch_size == 8  # 2 prompts x 2 waveforms, CFG halves
    assert rep.network_calls == counter.count < 16
    for i in range(4):  # uncond row i and cond row i + 4 share every decision
        assert rep.per_sample_computed[i] == rep.per_sample_computed[i + 4]
        assert rep.per_sample_computed[i] + rep.per_sample_skipped[i] == 16


def test_plain_pipeline_gets_the_fix_only_while_accelerated():
    pipe = tiny_musicldm_pipeline()
    with pytest.raises(AttributeError, match="BaseModelOutputWithPooling"):
        generate(pipe, steps=2)  # diffusers 0.42.1 + transformers 5, without the fix
    keys, encoder_keys = set(pipe.__dict__), set(pipe.text_encoder.__dict__)
    sadakit.accelerate(pipe)
    assert torch.isfinite(generate(pipe, steps=8)).all()
    sadakit.remove(pipe)
    assert set(pipe.__dict__) == keys and set(pipe.text_encoder.__dict__) == encoder_keys
    assert not is_musicldm_compat_applied(pipe)
    with pytest.raises(AttributeError):  # exactly as before: still broken (documented)
        generate(pipe, steps=2)
    assert fix_musicldm(pipe) is True
    assert torch.isfinite(generate(pipe, steps=2)).all()


def test_fix_applied_while_accelerated_is_kept_by_remove():
    pipe = tiny_musicldm_pipeline()
    sadakit.accelerate(pipe)
    fix_musicldm(pipe)  # the user claims the fix: it is theirs now
    sadakit.remove(pipe)
    assert is_musicldm_compat_applied(pipe)


def test_same_call_for_image_and_audio_pipelines(musicldm, sdxl):
    for pipe in (sdxl, musicldm):
        sadakit.accelerate(pipe)
    image = sdxl("a red square", num_inference_steps=12, output_type="pt", height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images
    audio = generate(musicldm, steps=12)
    assert torch.isfinite(image).all() and torch.isfinite(audio).all()
    assert sadakit.report(sdxl).family == "sdxl" and sadakit.report(musicldm).family == "musicldm"
    assert sadakit.report(musicldm).network_calls < 12
    assert "MusicLDMPipeline" in sadakit.supported_pipelines()
    assert {"AudioLDMPipeline", "AudioLDM2Pipeline"} <= set(sadakit.supported_pipelines())


@pytest.mark.parametrize("family", ["audioldm", "audioldm2"])
def test_audioldm_families_share_the_plugin(family):
    from sadakit.testing.audio import tiny_audioldm2_pipeline, tiny_audioldm_pipeline

    pipe = tiny_audioldm_pipeline() if family == "audioldm" else tiny_audioldm2_pipeline()
    base = generate(pipe, steps=12)
    sadakit.accelerate(pipe, attrs.evolve(sadakit.default_config(pipe), token_resolutions="all"))
    out = generate(pipe, steps=12)
    rep = sadakit.report(pipe)
    assert rep.family == family and rep.network_calls < 12 and torch.isfinite(out).all()
    assert rep.per_sample_computed[0] == rep.per_sample_computed[1]  # CFG pair
    sadakit.remove(pipe)
    assert torch.equal(generate(pipe, steps=12), base)


# ------------------------------------------------------------------ metrics


def test_metrics_identical_and_ordered_degradation():
    g = torch.Generator().manual_seed(0)
    ref = 0.3 * torch.randn(2, 8000, generator=g)
    assert audio_metrics.snr(ref, ref) == float("inf")
    assert audio_metrics.log_spectral_distance(ref, ref, 16000) == 0.0
    assert audio_metrics.log_mel_psnr(ref, ref, 16000) == float("inf")
    noisy = [ref + s * torch.randn(ref.shape, generator=g) for s in (1e-3, 1e-2, 1e-1)]
    snrs = [audio_metrics.snr(x, ref) for x in noisy]
    lsds = [audio_metrics.log_spectral_distance(x, ref, 16000) for x in noisy]
    psnrs = [audio_metrics.log_mel_psnr(x, ref, 16000) for x in noisy]
    assert snrs[0] > snrs[1] > snrs[2] and psnrs[0] > psnrs[1] > psnrs[2]
    assert 0 < lsds[0] < lsds[1] < lsds[2]
    assert abs(snrs[1] - 10 * np.log10(0.09 / 1e-4)) < 0.5  # signal var 0.09, noise var 1e-4
    with pytest.raises(ValueError, match="differ in shape"):
        audio_metrics.snr(ref, ref[:, :100])


def test_spectrogram_psnr_against_a_float64_reference():
    """Per clip: 10 log10(range(reference)^2 / MSE), then the mean over clips."""
    ref = torch.randn(3, 64, 40, dtype=torch.float64) * torch.rand(3, 1, 1, dtype=torch.float64) * 4
    test = ref + 0.05 * torch.randn_like(ref)
    expected = np.mean([10 * np.log10(float(r.max() - r.min()) ** 2 / float(((t - r) ** 2).mean()))
                        for t, r in zip(test, ref)])
    assert abs(audio_metrics.spectrogram_psnr(test.float(), ref.float()) - expected) < 1e-3
    assert audio_metrics.spectrogram_psnr(ref, ref) == float("inf")
    with pytest.raises(ValueError, match="differ in shape"):
        audio_metrics.spectrogram_psnr(ref, ref[:, :, :10])


def test_spectrogram_lpips_is_skipped_without_local_weights(caplog):
    pytest.importorskip("torchmetrics")
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision present: LPIPS availability depends on the local hub cache")
    except ImportError:
        pass
    audio_metrics._lpips_notice_given = False
    x = torch.zeros(1, 4000)
    with caplog.at_level("WARNING", logger="sadakit"):
        assert audio_metrics.spectrogram_lpips(x, x, 16000) is None
    assert "LPIPS skipped" in caplog.text and "downloaded" in caplog.text


# ------------------------------------------------------------------ WAV output


def test_wav_round_trip(tmp_path):
    batch = np.stack([np.linspace(-1.5, 1.5, 1600), 0.25 * np.sin(np.arange(1600) / 5.0)]).astype(np.float32)
    paths = write_wav(tmp_path / "clip.wav", torch.from_numpy(batch), 16000)
    assert [p.name for p in paths] == ["clip_0.wav", "clip_1.wav"]
    for path, clip in zip(paths, batch):
        with wave.open(str(path), "rb") as f:
            assert (f.getframerate(), f.getnchannels(), f.getsampwidth(), f.getnframes()) == (16000, 1, 2, 1600)
            samples = np.frombuffer(f.readframes(1600), dtype="<i2")
        assert np.array_equal(samples, to_pcm16(clip))
    assert samples.max() <= 32767
    first = np.frombuffer(wave.open(str(paths[0]), "rb").readframes(1600), dtype="<i2")
    assert first[0] == -32767 and first[-1] == 32767  # clipped, not wrapped
    mono = write_wav(tmp_path / "one", batch[1], 22050)
    data, rate = read_wav(mono[0])
    assert mono[0].name == "one.wav" and rate == 22050
    assert np.abs(data[0] - batch[1]).max() <= 0.5 / 32767 + 1e-7


def test_generate_audio_entry_point(tmp_path):
    pipe = tiny_musicldm_pipeline()  # plain: generate_audio applies the CLAP fix itself
    plain = generate_audio(pipe, PROMPT, 8, 0, False, tmp_path / "plain.wav")
    fast = generate_audio(pipe, PROMPT, 8, 0, True, tmp_path / "fast.wav")
    assert plain["report"] is None and fast["report"]["network_calls"] < 8
    assert not sadakit.is_accelerated(pipe)  # left as found
    sadakit.accelerate(pipe)  # what the CLI does: accelerate, then generate as set up
    as_set_up = generate_audio(pipe, PROMPT, 8, 0, False, tmp_path / "cli.wav")
    assert as_set_up["accelerated"] and sadakit.is_accelerated(pipe)
    assert read_wav(as_set_up["paths"][0])[0].tolist() == read_wav(fast["paths"][0])[0].tolist()
    for result in (plain, fast):
        data, rate = read_wav(result["paths"][0])
        assert rate == result["sample_rate"] == 16000
        assert data.shape == (1, round(result["seconds"] * 16000))
