"""The bundled trained models load through ``from_pretrained``, generate, follow prompts,
and fail with a clear error naming the file when their directory is damaged."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from sadakit.bundled import shapes
from sadakit.bundled import data_shapes

#: Target of issue 8: at least 90% of generations classified exactly as prompted.
ADHERENCE_TARGET = 0.9


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core CPU two threads per
    process spin against other jobs (measured: 177 s vs ~15 s for the adherence set)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    return shapes.load_pipeline()


def test_loads_as_real_pipeline(pipe: StableDiffusionPipeline) -> None:
    assert type(pipe) is StableDiffusionPipeline
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert not pipe.unet.training and not pipe.text_encoder.training


def test_shipped_weights_are_small() -> None:
    total = sum(p.stat().st_size for p in shapes.MODEL_DIR.rglob("*.safetensors")) + shapes.CLASSIFIER_FILE.stat().st_size
    assert total < 20 * 2**20


def test_generates_on_cpu(pipe: StableDiffusionPipeline) -> None:
    images = shapes.generate(pipe, ["a red circle in the top left"], seed=0, num_inference_steps=4)
    assert images.shape == (1, 3, data_shapes.IMAGE_SIZE, data_shapes.IMAGE_SIZE)
    assert torch.isfinite(images).all()


def test_classifier_reads_generator_images() -> None:
    labels, images = data_shapes.sample_batch(128, torch.Generator().manual_seed(123))
    accuracy = (shapes.load_classifier().predict(images) == labels).all(dim=1).float().mean().item()
    assert accuracy > 0.97


@pytest.fixture(scope="module")
def adherence(pipe: StableDiffusionPipeline):
    """One generation of the fixed 16-prompt set (seed 0) at the default steps and guidance."""
    return shapes.evaluate(pipe, n_prompts=16, seeds=(0,))


def test_shape_and_colour_follow_the_prompt(adherence) -> None:
    assert adherence.shape >= ADHERENCE_TARGET, adherence
    assert adherence.colour >= ADHERENCE_TARGET, adherence


def test_prompt_adherence_at_default_steps(adherence) -> None:
    """Issue 8: all three attributes (shape, colour and position) right in >= 90%."""
    assert adherence.position >= ADHERENCE_TARGET, adherence
    assert adherence.all_correct >= ADHERENCE_TARGET, adherence


def test_shipped_scheduler_has_zero_terminal_snr(pipe: StableDiffusionPipeline) -> None:
    """The fix for position at chance: t=999 must be pure noise at training and sampling,
    otherwise the model reads position from the clean-latent leak instead of the prompt."""
    config = pipe.scheduler.config
    assert config.rescale_betas_zero_snr and config.prediction_type == "v_prediction", config
    assert config.timestep_spacing == "trailing", config
    assert float(pipe.scheduler.alphas_cumprod[-1]) < 1e-6
    pipe.scheduler.set_timesteps(shapes.DEFAULT_STEPS)
    assert int(pipe.scheduler.timesteps[0]) == pipe.scheduler.config.num_train_timesteps - 1


def test_every_pipeline_file_is_checked() -> None:
    for name in shapes.PIPELINE_FILES:
        assert (shapes.MODEL_DIR / name).is_file(), name


def test_pitch_measurement_on_synthesised_notes() -> None:
    """The DSP check the audio model will be judged by is right on ground truth."""
    from sadakit.bundled.data_notes import NOTES, TIMBRES, NoteLabel, measure_pitch, semitone_error, synthesize

    labels = [NoteLabel(n, t) for n in range(len(NOTES)) for t in range(len(TIMBRES))]
    waves = synthesize(labels, 1.28, torch.Generator().manual_seed(0))
    error = semitone_error(measure_pitch(waves), torch.tensor([l.frequency for l in labels]))
    assert error.abs().max() < 0.25


def test_compare_sada_on_the_bundled_model():
    # At the default step count, where the docs quote it. (At 20 steps the zero-terminal-SNR
    # model measured 37.4 dB, 14 of 20 calls, adherence unchanged: fewer, larger steps leave
    # SADA's extrapolation less room; see docs/bundled_models.md.)
    cmp = shapes.compare(shapes.load_pipeline(), n_prompts=2, repeats=1, num_inference_steps=shapes.DEFAULT_STEPS)
    row = cmp.row()
    assert row["denoiser_calls"] == shapes.DEFAULT_STEPS and row["network_calls"] < 0.8 * shapes.DEFAULT_STEPS
    assert row["psnr_db"] > 40 and cmp.sada_output.shape == cmp.baseline_output.shape
    assert cmp.sada_adherence == cmp.baseline_adherence
