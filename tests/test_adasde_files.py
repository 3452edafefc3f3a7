"""AdaSDE coefficient files are untrusted input: every broken file is refused quickly, by name.

Two real files are the starting points: one distilled here on the analytic testbed (through
the command line, so it records the testbed model's fingerprint) and a shipped file of the
bundled shapes model. Seeded random edits of their metadata, tensors and bytes must each
either load and sample finite outputs, or be refused with ``CoefficientMismatchError`` (whose
subclasses are ``CoefficientFileError`` and ``OtherModelError``) naming the file, in under a
second. Then one test per problem of issue 15 (items 2 and 3) that the code before it failed.
"""

from __future__ import annotations

import json
import logging
import math
import random
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from sadakit.adasde import (
    AdaSDEScheduler,
    CoefficientFileError,
    CoefficientMetadata,
    CoefficientMismatchError,
    OtherModelError,
    load_coefficients,
    model_fingerprint,
    save_coefficients,
    scheduler_for_pipeline,
)
from sadakit.adasde.coefficients import MAX_NFE, METADATA_KEY
from sadakit.bundled.shapes_adasde import SHAPES_ADASDE_DIR
from sadakit.testbeds.pipeline import SD_SCHEDULE, GMMEpsModel, GMMPipeline

SHIPPED = SHAPES_ADASDE_DIR / "euler-nfe5.safetensors"
#: a guard against a file that makes sampling run away (a huge NFE the validation missed), not a
#: speed target: generous, so a busy machine cannot fail it (0.1-0.4 s per case when quiet)
CASE_SECONDS = 30.0


@pytest.fixture(autouse=True)
def _fast_cpu_settings() -> Iterator[None]:
    # as tests/test_adasde.py: the testbed's posteriors underflow to denormals at small sigma
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def gmm_pipe() -> GMMPipeline:
    return GMMPipeline(GMMEpsModel("gmm2d-8"), EulerDiscreteScheduler(**SD_SCHEDULE))


@pytest.fixture(scope="module")
def testbed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real file, distilled (briefly) on the testbed through ``sadakit adasde distill``."""
    from sadakit.adasde.cli import main

    out = tmp_path_factory.mktemp("base") / "gmm2d-8-nfe5.safetensors"
    assert main(["distill", "--testbed", "gmm2d-8", "--nfe", "5", "--iterations", "3", "--batch", "16",
                 "--teacher-factor", "2", "--out", str(out), "--fresh"]) == 0
    return out


@pytest.fixture
def sd_v(sd_vpred_pipe: Any) -> Iterator[Any]:
    """The session's tiny v-prediction SD pipeline, its scheduler restored after the test."""
    base = sd_vpred_pipe.scheduler
    sd_vpred_pipe.set_progress_bar_config(disable=True)
    yield sd_vpred_pipe
    sd_vpred_pipe.scheduler = base


# --------------------------------------------------------------------------------------
# editing safetensors files by hand (the header is 8 bytes of length, then JSON)
# --------------------------------------------------------------------------------------


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict[str, Any], payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + payload


def with_meta(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    header, payload = split(data)
    meta = json.loads(header["__metadata__"][METADATA_KEY])
    edit(meta)
    header["__metadata__"][METADATA_KEY] = json.dumps(meta)
    return join(header, payload)


def with_header(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    header, payload = split(data)
    edit(header)
    return join(header, payload)


def with_value(data: bytes, tensor: str, index: int, value: float) -> bytes:
    """Overwrite one element of a tensor in place (its header entry tells where and how wide)."""
    header, payload = split(data)
    entry = header[tensor]
    fmt, width = ("<f", 4) if entry["dtype"] == "F32" else ("<d", 8)
    at = entry["data_offsets"][0] + width * index
    return join(header, payload[:at] + struct.pack(fmt, value) + payload[at + width :])


def numel(data: bytes, tensor: str) -> int:
    return math.prod(split(data)[0][tensor]["shape"])


# --------------------------------------------------------------------------------------
# the fuzz cases
# --------------------------------------------------------------------------------------

HOSTILE_VALUES: list[Any] = [
    None, "", "5", "x" * 5000, "a\nb", -1, 0, 1, 10**12, 2**70, -(10**400), 1e308, -1e308, 1e-320,
    float("nan"), float("inf"), float("-inf"), True, False, [], [5], {}, {"a": 1}, 0.5, 3.0, 500, 501,
]


def metadata_cases(base: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    fields = list(json.loads(split(base)[0]["__metadata__"][METADATA_KEY]))
    for name in fields:
        yield f"delete {name}", with_meta(base, lambda m, k=name: m.pop(k))
        for value in rng.sample(HOSTILE_VALUES, 6):
            yield f"{name}={value!r:.40}", with_meta(base, lambda m, k=name, v=value: m.__setitem__(k, v))
    for name, value in [("nfe", 10**12), ("gamma_max", 1e308), ("nfe", "5"), ("nfe", 7), ("nfe", MAX_NFE),
                        ("gamma_max", 1.0), ("gamma_max", 0.0), ("guidance_scale", None), ("model", "some/other"),
                        ("sigma_max", 1e5), ("sigma_min", 1e-5), ("solver", "euler"), ("analytic_first_step", False),
                        ("prediction_type", "flow"), ("format_version", 2), ("model_fingerprint", "X:" + "0" * 64),
                        ("training", {"k" * 100: 1}), ("training", {"nested": {"a": 1}})]:
        yield f"{name}={value!r:.40}", with_meta(base, lambda m, k=name, v=value: m.__setitem__(k, v))
    yield "unknown field", with_meta(base, lambda m: m.__setitem__("surprise", 1))
    yield "metadata not JSON", with_header(base, lambda h: h["__metadata__"].__setitem__(METADATA_KEY, "{nfe: 5"))
    yield "metadata a list", with_header(base, lambda h: h["__metadata__"].__setitem__(METADATA_KEY, "[5]"))
    yield "metadata nested deeply", with_header(base, lambda h: h["__metadata__"].__setitem__(METADATA_KEY, "[" * 20000))
    yield "no sadakit metadata", with_header(base, lambda h: h["__metadata__"].pop(METADATA_KEY))
    yield "no __metadata__", with_header(base, lambda h: h.pop("__metadata__"))


def tensor_cases(base: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    for tensor in ("raw", "sigmas"):
        for value in (float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 1e30, 3.0e38):
            index = rng.randrange(numel(base, tensor))
            yield f"{tensor}[{index}]={value}", with_value(base, tensor, index, value)
        yield f"{tensor} shape doubled", with_header(base, lambda h, t=tensor: h[t].__setitem__("shape", h[t]["shape"] * 2))
        yield f"{tensor} shape [1]", with_header(base, lambda h, t=tensor: h[t].__setitem__("shape", [1]))
        for dtype in ("F16", "BF16", "I32", "F64", "F32", "U8", "nonsense", 7):
            yield f"{tensor} dtype {dtype}", with_header(base, lambda h, t=tensor, d=dtype: h[t].__setitem__("dtype", d))
        yield f"{tensor} missing", with_header(base, lambda h, t=tensor: h.pop(t))
        yield f"{tensor} offsets shifted", with_header(
            base, lambda h, t=tensor: h[t].__setitem__("data_offsets", [o + 4 for o in h[t]["data_offsets"]]))
        yield f"{tensor} offsets huge", with_header(
            base, lambda h, t=tensor: h[t].__setitem__("data_offsets", [0, 2**62]))
        yield f"{tensor} offsets negative", with_header(base, lambda h, t=tensor: h[t].__setitem__("data_offsets", [-8, 0]))
    raw_n = numel(base, "raw")
    yield "raw values shuffled in magnitude", with_value(base, "raw", rng.randrange(raw_n), -3.0e38)
    yield "sigmas not decreasing", with_value(base, "sigmas", 1, 1e4)
    yield "extra tensor", with_header(base, lambda h: h.__setitem__("extra", dict(h["raw"])))


def byte_cases(base: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    for cut in sorted(rng.sample(range(len(base)), 20)) + [1, 7, 8, 9, len(base) - 1]:
        yield f"truncated at {cut}", base[:cut]
    for flips in range(40):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        yield f"random bytes overwritten #{flips}", bytes(data)
    for length in (1, 8, 9, 100, len(base), 5000):
        yield f"random file of {length} bytes", rng.randbytes(length)
    yield "header length huge", (2**63).to_bytes(8, "little") + base[8:]
    yield "header length zero", (0).to_bytes(8, "little") + base[8:]
    yield "header length one short", (int.from_bytes(base[:8], "little") - 1).to_bytes(8, "little") + base[8:]
    yield "trailing garbage", base + b"\x00" * 16
    yield "2 MB file", base + b"\x00" * (2 << 20)
    n = int.from_bytes(base[:8], "little")
    yield "header not UTF-8", base[:8] + b"\xff" * n + base[8 + n :]
    yield "duplicate key", base[:8] + base[8:].replace(b'"raw"', b'"sigmas"', 1)


def all_cases(base: bytes, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [*metadata_cases(base, rng), *tensor_cases(base, rng), *byte_cases(base, rng)]


# --------------------------------------------------------------------------------------
# running one case: loads and samples finite, or is refused by name, within a second
# --------------------------------------------------------------------------------------


def sample_testbed(path: Path, pipe: GMMPipeline) -> torch.Tensor:
    base = pipe.scheduler
    try:
        pipe.scheduler = AdaSDEScheduler.from_file(path, pipe=pipe)
        return pipe(batch_size=8, num_inference_steps=pipe.scheduler.meta.nfe,
                    generator=torch.Generator().manual_seed(0)).samples
    finally:
        pipe.scheduler = base


def sample_tiny_sd(path: Path, pipe: Any) -> torch.Tensor:
    base = pipe.scheduler
    try:
        pipe.scheduler = scheduler_for_pipeline(pipe, path, allow_other_model=True, guidance_scale=5.0)
        return pipe("a red cube", num_inference_steps=pipe.scheduler.meta.nfe, guidance_scale=5.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images
    finally:
        pipe.scheduler = base


def outcome(path: Path, sample: Callable[[Path], torch.Tensor]) -> str:
    """``"sampled"`` or ``"refused"``; anything else (another exception, NaN, slow) fails the test."""
    start = time.perf_counter()
    try:
        out = sample(path)
    except CoefficientMismatchError as exc:
        message = str(exc)
        assert str(path) in message, message
        assert "\n" not in message, message
        result = "refused"
    else:
        assert torch.isfinite(out).all(), f"{path}: loaded, but sampled non-finite values"
        result = "sampled"
    seconds = time.perf_counter() - start
    assert seconds < CASE_SECONDS, f"{path}: took {seconds:.2f} s"
    return result


def run_cases(tmp_path: Path, base: bytes, seed: int, sample: Callable[[Path], torch.Tensor]) -> dict[str, str]:
    results = {}
    for i, (name, data) in enumerate(all_cases(base, seed)):
        path = tmp_path / f"case{i:03d}.safetensors"
        path.write_bytes(data)
        try:
            results[name] = outcome(path, sample)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from None
    return results


def test_fuzzed_testbed_files_sample_finite_or_are_refused_by_name(tmp_path, testbed_file, gmm_pipe, caplog):
    caplog.set_level(logging.ERROR, logger="sadakit.adasde")
    assert outcome(testbed_file, lambda p: sample_testbed(p, gmm_pipe)) == "sampled"
    results = run_cases(tmp_path, testbed_file.read_bytes(), 0, lambda p: sample_testbed(p, gmm_pipe))
    def result(prefix: str) -> str:
        return next(v for k, v in results.items() if k.startswith(prefix))

    for name in ("nfe=1000000000000", "gamma_max=1e+308", "nfe='5'", "raw[", "sigmas dtype F16", "truncated at"):
        assert result(name) == "refused", name
    assert result("gamma_max=1.0") == result("guidance_scale=None") == result("model='some/other'") == "sampled"
    assert result("model_fingerprint='X:") == "refused"  # another model's fingerprint
    assert list(results.values()).count("refused") > 0.8 * len(results)
    for special in (tmp_path, tmp_path / "missing.safetensors", tmp_path / "empty.safetensors"):
        if special.name == "empty.safetensors":
            special.write_bytes(b"")
        assert outcome(special, lambda p: sample_testbed(p, gmm_pipe)) == "refused"


def test_fuzzed_shipped_file_samples_finite_in_a_tiny_pipeline_or_is_refused(tmp_path, sd_v, caplog):
    caplog.set_level(logging.ERROR, logger="sadakit.adasde")
    results = run_cases(tmp_path, SHIPPED.read_bytes(), 1, lambda p: sample_tiny_sd(p, sd_v))
    assert "sampled" in results.values() and "refused" in results.values()


# --------------------------------------------------------------------------------------
# issue 15, items 2 and 3: one test per problem (each failed before this file existed)
# --------------------------------------------------------------------------------------


def refusal(path: Path, call: Callable[[], Any] | None = None) -> str:
    """The one-line CoefficientFileError message of loading ``path``; fails on anything else."""
    with pytest.raises(CoefficientFileError) as info:
        (call or (lambda: AdaSDEScheduler.from_file(path, EulerDiscreteScheduler(**SD_SCHEDULE))))()
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_huge_nfe_is_refused_at_once_instead_of_hanging(tmp_path, testbed_file):
    """Before: steps_for_nfe counted up to 10**12 (killed after 15 minutes)."""
    path = tmp_path / "nfe.safetensors"
    path.write_bytes(with_meta(testbed_file.read_bytes(), lambda m: m.update(nfe=10**12)))
    outcome_box: dict[str, BaseException] = {}

    def load() -> None:
        try:
            AdaSDEScheduler.from_file(path, EulerDiscreteScheduler(**SD_SCHEDULE))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome_box["error"] = exc

    worker = threading.Thread(target=load, daemon=True)  # a hang must fail the test, not stall it
    worker.start()
    worker.join(timeout=5.0)
    assert not worker.is_alive(), "from_file still running after 5 s"
    error = outcome_box.get("error")
    assert isinstance(error, CoefficientFileError), error
    assert str(path) in str(error) and "'nfe'" in str(error) and f"from 1 to {MAX_NFE}" in str(error)


def test_overflowing_gamma_max_and_corrupted_tensors_are_refused_not_sampled_as_nan(tmp_path, testbed_file, gmm_pipe):
    """Before: both loaded and gave all-NaN samples (sadakit generate wrote a black PNG)."""
    base = testbed_file.read_bytes()
    cases = {
        "gamma.safetensors": (with_meta(base, lambda m: m.update(gamma_max=1e308)), "'gamma_max'"),
        "nanraw.safetensors": (with_value(base, "raw", 5, float("nan")), "raw coefficients"),
        "infsigma.safetensors": (with_value(base, "sigmas", 2, float("inf")), "sigma grid"),
    }
    for name, (data, field) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert field in refusal(path, lambda: sample_testbed(path, gmm_pipe))


def test_unreadable_files_give_one_line_errors_naming_the_path(tmp_path, testbed_file):
    """Before: raw SafetensorError ("header too large"), OSError "No such device", bare TypeError."""
    base = testbed_file.read_bytes()
    files = {
        "truncated.safetensors": base[: len(base) // 2],
        "random.safetensors": random.Random(3).randbytes(300),
        "nfe-string.safetensors": with_meta(base, lambda m: m.update(nfe="5")),
        "empty.safetensors": b"",
    }
    expected = {"truncated.safetensors": "truncated", "random.safetensors": "not a safetensors file",
                "nfe-string.safetensors": "'nfe': '5' is not allowed; allowed: an integer", "empty.safetensors": "empty"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert expected[name] in refusal(tmp_path / name)
    assert "is a directory" in refusal(tmp_path)
    assert "does not exist" in refusal(tmp_path / "missing.safetensors")


def test_a_file_for_another_model_is_refused_for_the_pipeline_unless_allowed(sd_v, caplog):
    """Before: `sadakit generate --pipeline tiny:sd-v --adasde-file <shapes file>` sampled happily."""
    original = sd_v.scheduler
    for load in (lambda: scheduler_for_pipeline(sd_v, SHIPPED, allow_other_model=False),
                 lambda: AdaSDEScheduler.from_file(SHIPPED, sd_v.scheduler, pipe=sd_v)):
        with pytest.raises(OtherModelError) as info:
            sd_v.scheduler = load()
        message = str(info.value)
        assert str(SHIPPED) in message and "'sadakit/bundled/shapes-sd'" in message
        assert "StableDiffusionPipeline" in message and "allow_other_model=True" in message
        assert sd_v.scheduler is original
    with caplog.at_level(logging.WARNING, logger="sadakit.adasde"):
        scheduler = scheduler_for_pipeline(sd_v, SHIPPED, allow_other_model=True)
    assert isinstance(scheduler, AdaSDEScheduler) and "sampling with them anyway" in caplog.text


# --------------------------------------------------------------------------------------
# the model identity: recorded at distillation, checked on load, older files still load
# --------------------------------------------------------------------------------------


def test_distillation_records_the_fingerprint_the_pipeline_is_checked_against(testbed_file, gmm_pipe, capsys):
    from sadakit.adasde.cli import main

    meta = load_coefficients(testbed_file).meta
    assert meta.model == "testbed:gmm2d-8" and meta.model_fingerprint == model_fingerprint(gmm_pipe)
    assert meta.model_fingerprint.startswith("GMMEpsModel:")
    other = GMMPipeline(GMMEpsModel("gmm64-16"), EulerDiscreteScheduler(**SD_SCHEDULE))
    with pytest.raises(OtherModelError, match="testbed:gmm2d-8"):
        AdaSDEScheduler.from_file(testbed_file, pipe=other)
    assert main(["inspect", str(testbed_file)]) == 0
    assert f"model fingerprint: {meta.model_fingerprint}" in capsys.readouterr().out


def test_pipeline_adapter_distillation_records_the_denoisers_fingerprint(sd_v):
    from sadakit.adasde import DistillConfig, distill_pipeline

    result = distill_pipeline(sd_v, "a red cube", DistillConfig(nfe=3, iterations=1, batch_size=1, teacher_factor=1),
                              guidance_scale=2.0, call_kwargs={"height": 64, "width": 64}, progress=False)
    assert result.coefficients.meta.model_fingerprint == model_fingerprint(sd_v) == model_fingerprint(sd_v.unet)


def test_fingerprint_follows_the_config_not_the_load_path_or_defaults(sd_v):
    from diffusers import UNet2DConditionModel

    unet = sd_v.unet
    same = UNet2DConditionModel.from_config({**unet.config, "_name_or_path": "/elsewhere"})
    bigger = UNet2DConditionModel.from_config({**unet.config, "cross_attention_dim": unet.config.cross_attention_dim * 2})
    assert model_fingerprint(same) == model_fingerprint(unet) != model_fingerprint(bigger)
    explicit_default = UNet2DConditionModel.from_config({**unet.config, "dropout": 0.0})  # 0.0 is the default
    assert model_fingerprint(explicit_default) == model_fingerprint(unet)


def test_a_file_without_fingerprint_loads_with_a_warning_and_the_name_check_still_works(tmp_path, testbed_file, gmm_pipe, caplog):
    cf = load_coefficients(testbed_file)
    old = tmp_path / "old.safetensors"
    save_coefficients(old, cf.raw, cf.sigmas, attrs.evolve(cf.meta, model_fingerprint=None))
    with caplog.at_level(logging.WARNING, logger="sadakit.adasde"):
        AdaSDEScheduler.from_file(old, pipe=gmm_pipe)
    assert "records no model fingerprint" in caplog.text and str(old) in caplog.text
    with pytest.raises(CoefficientMismatchError, match=r"model: file has 'testbed:gmm2d-8', pipeline has 'other'") as info:
        AdaSDEScheduler.from_file(old, pipe=gmm_pipe, model="other")
    assert str(old) in str(info.value)


def test_the_shipped_files_record_their_bundled_models_fingerprint():
    from sadakit.bundled import notes, shapes
    from sadakit.bundled.adasde_files import NOTES, SHAPES

    for spec, load in ((SHAPES, shapes.load_pipeline), (NOTES, notes.load_pipeline)):
        expected = model_fingerprint(load())
        for name in spec.available():
            assert load_coefficients(spec.directory / name).meta.model_fingerprint == expected, name


def test_metadata_is_checked_before_distillation_starts():
    from sadakit.adasde import DistillConfig, distill

    def never(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the denoiser ran before the metadata was checked")

    with pytest.raises(CoefficientFileError, match=r"'gamma_max': 2\.0 is not allowed; allowed: a finite number from 0 to 1"):
        distill(never, lambda b, g: torch.randn(b, 2, generator=g), DistillConfig(nfe=5, gamma_max=2.0, iterations=1),
                model="m", progress=False)
    with pytest.raises(CoefficientFileError, match="'model'"):
        CoefficientMetadata(model="two\nlines", nfe=5)


def test_inspect_refuses_a_broken_file_in_one_line(tmp_path):
    from sadakit.adasde.cli import main

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(SHIPPED.read_bytes()[:100])
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(broken)])
    assert str(info.value).startswith("sadakit adasde inspect: AdaSDE coefficient file ") and str(broken) in str(info.value)


def test_a_saved_scheduler_config_with_an_unknown_metadata_field_is_refused_by_name(testbed_file, tmp_path):
    """A scheduler saved with save_pretrained and read back by another sadakit: an unknown
    coefficient_meta field gets a named error, not a bare TypeError from the attrs class."""
    from sadakit.adasde import CoefficientMismatchError

    scheduler = AdaSDEScheduler.from_file(testbed_file, EulerDiscreteScheduler(**SD_SCHEDULE))
    scheduler.save_pretrained(tmp_path)
    assert AdaSDEScheduler.from_pretrained(tmp_path).meta == scheduler.meta
    config_path = tmp_path / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["coefficient_meta"]["learned_grid_v9"] = [1, 2]
    config_path.write_text(json.dumps(config))
    with pytest.raises(CoefficientMismatchError, match=r"unknown field\(s\) \['learned_grid_v9'\]"):
        AdaSDEScheduler.from_pretrained(tmp_path)
