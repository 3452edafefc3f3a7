"""`sadakit bench` end to end on tiny pipelines, including a 2-process (torchrun) run."""

import json
import os
import subprocess
import sys

import pytest

from sadakit.bench import markdown, parse_method, run_bench, summarize, write_outputs

METHODS = ["fewer-steps:0.5", "sada", "deepcache:3", "fbcache:0.5"]
ARGS = ["--pipeline", "tiny:sdxl", "--steps", "6", "--repeats", "1", "--prompts", "a red square", "a blue circle"]


def test_bench_table_lists_methods_and_not_applicable(sdxl, tmp_path):
    result = run_bench(sdxl, prompts=["a red square", "a blue circle"], seeds=[0], steps=6, methods=METHODS,
                       repeats=1, call_kwargs={"height": 64, "width": 64}, progress=False)
    assert {r.method for r in result.cases} == {"baseline", "fewer-steps:0.5", "sada", "deepcache:3"}
    assert len(result.cases) == 2 * 4
    assert "fbcache:0.5" in result.not_applicable and "UNet" in result.not_applicable["fbcache:0.5"]
    rows = {r["method"]: r for r in summarize(result)}
    assert rows["baseline"]["psnr_db"] == float("inf") and rows["baseline"]["flops_ratio"] == pytest.approx(1.0)
    assert rows["fewer-steps:0.5"]["denoiser_forwards"] == 3
    assert rows["fewer-steps:0.5"]["flops_ratio"] < 0.7
    assert rows["deepcache:3"]["flops_ratio"] < 1.0 and rows["deepcache:3"]["psnr_db"] < 200
    table = markdown(result)
    assert "| fbcache:0.5 | not applicable:" in table and "| sada |" in table
    paths = write_outputs(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert len(data["cases"]) == 8 and data["not_applicable"]
    assert paths["plot"].stat().st_size > 0
    # every method left the pipeline as it was: no instance-level forward anywhere, no hooks
    assert all("forward" not in m.__dict__ for m in sdxl.unet.modules())
    assert not getattr(sdxl.unet, "_diffusers_hook", None) or not sdxl.unet._diffusers_hook.hooks


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="allowed"):
        parse_method("warp-drive")
    with pytest.raises(ValueError, match="knob"):
        parse_method("sada:fast")


def _cli(tmp_path, name, launcher):
    out = tmp_path / name
    cmd = launcher + ["bench", *ARGS, "--methods", *METHODS, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "bench.json").read_text())


def _deterministic(data):
    return sorted((c["case"], c["method"], c["denoiser_forwards"], round(c["flops"]), round(min(c["fidelity"]["psnr_db"], 999), 4))
                  for c in data["cases"])


def _free_port() -> int:
    """A port nobody listens on now (a fixed one clashes when two test runs share the machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # three process start-ups (~40 s); test_generate_many runs torchrun by default
def test_two_processes_match_one(tmp_path):
    one = _cli(tmp_path, "one", [sys.executable, "-m", "sadakit"])
    two = _cli(tmp_path, "two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_port", str(_free_port()), "-m", "sadakit"])
    assert one["processes"] == 1 and two["processes"] == 2
    assert _deterministic(one) == _deterministic(two)


def test_a_peer_that_breaks_is_reported_not_fatal(sdxl, monkeypatch):
    from sadakit.bench import methods

    class Broken(methods.Method):
        def apply(self, pipe):
            raise RuntimeError("peer exploded")

    monkeypatch.setitem(methods.METHODS, "broken", Broken)
    result = run_bench(sdxl, prompts=["a red square"], seeds=[0], steps=4, methods=["broken", "fewer-steps:0.5"],
                       repeats=1, call_kwargs={"height": 64, "width": 64}, progress=False)
    assert "peer exploded" in result.not_applicable["broken"]
    assert {r.method for r in result.cases} == {"baseline", "fewer-steps:0.5"}
    assert "forward" not in sdxl.unet.__dict__


# --------------------------------------------------------------- diffusers caches on tiny Flux

@pytest.fixture(scope="module")
def flux():
    from sadakit.testing import tiny_flux_pipeline

    return tiny_flux_pipeline()


FLUX_KWARGS = {"height": 64, "width": 64, "max_sequence_length": 32, "num_inference_steps": 8}
PROMPTS = ["a red square", "a blue circle"]


def _generate(pipe, prompt):
    import torch

    from sadakit.bench.runner import call_pipeline

    return call_pipeline(pipe, {**FLUX_KWARGS, "prompt": prompt, "generator": torch.Generator().manual_seed(0)})


def _flops(pipe, prompt):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _generate(pipe, prompt)
    return counter.get_total_flops()


@pytest.mark.parametrize("spec", ["fbcache:0.6", "taylorseer:2", "pab:2", "fastercache:2", "magcache:0.5"])
def test_diffusers_cache_applies_runs_and_restores_exactly(flux, spec):
    import torch

    from sadakit.bench.restoration import pipeline_fingerprint

    before = [_generate(flux, p) for p in PROMPTS]
    base_flops = _flops(flux, PROMPTS[0])
    fingerprint = pipeline_fingerprint(flux)
    method = parse_method(spec)
    assert method.not_applicable(flux) is None
    method.prepare(flux, {**FLUX_KWARGS, "prompt": PROMPTS[0], "generator": torch.Generator().manual_seed(1)})
    method.apply(flux)
    try:
        cached = [_generate(flux, p) for p in PROMPTS]  # two generations: state resets between them
        cached_flops = _flops(flux, PROMPTS[0])
    finally:
        method.remove(flux)
    assert all(torch.isfinite(c).all() for c in cached)
    assert cached_flops < base_flops, f"{spec} skipped nothing"
    assert not all(torch.equal(a, b) for a, b in zip(before, cached))
    assert pipeline_fingerprint(flux) == fingerprint
    after = [_generate(flux, p) for p in PROMPTS]
    assert all(torch.equal(a, b) for a, b in zip(before, after)), f"{spec} changed the pipeline after removal"


def test_fbcache_and_magcache_run_after_cache_dit(flux):
    """Regression: cache-dit's disable re-adds the block lists at the end of ``_modules``; FBCache
    then took a single block as its head and failed ('NoneType' object is not subscriptable)."""
    pytest.importorskip("cache_dit")
    order = list(flux.transformer._modules)
    result = run_bench(flux, prompts=PROMPTS, seeds=[0], steps=6, methods=["cache-dit:0.6", "fbcache:0.5", "magcache:0.3"],
                       repeats=1, call_kwargs={"height": 64, "width": 64, "max_sequence_length": 32}, progress=False)
    assert result.not_applicable == {}
    assert {r.method for r in result.cases} == {"baseline", "cache-dit:0.6", "fbcache:0.5", "magcache:0.3"}
    assert list(flux.transformer._modules) == order
    assert "forward" not in flux.transformer.__dict__


def test_a_method_that_leaves_a_hook_stops_the_bench(sdxl, monkeypatch):
    from sadakit.bench import methods
    from sadakit.bench.restoration import PipelineNotRestoredError

    class Leaky(methods.Method):
        def apply(self, pipe):
            self._state["handle"] = pipe.unet.conv_in.register_forward_hook(lambda *a: None)

    monkeypatch.setitem(methods.METHODS, "leaky", Leaky)
    try:
        with pytest.raises(PipelineNotRestoredError, match=r"leaky did not restore the pipeline .*unet\.conv_in: forward hooks"):
            run_bench(sdxl, prompts=["a red square"], seeds=[0], steps=3, methods=["fewer-steps", "leaky"], repeats=1,
                      call_kwargs={"height": 64, "width": 64}, progress=False)
    finally:
        sdxl.unet.conv_in._forward_hooks.clear()


# --------------------------------------------------------------- knob sweeps

def test_sweep_specs_expand_and_validate():
    from sadakit.bench import SWEEPS, expand_specs

    assert expand_specs(["fbcache:0.2,0.4", "sada", "fewer-steps:0.50,0.5"]) == ["fbcache:0.2", "fbcache:0.4", "sada", "fewer-steps:0.5"]
    assert expand_specs(["deepcache", "sada-criterion"], sweep=True) == [f"deepcache:{k:g}" for k in SWEEPS["deepcache"]] + ["sada-criterion"]
    assert expand_specs(["deepcache:4"], sweep=True) == ["deepcache:4"]  # an explicit knob wins
    for bad, match in [("fbcache:0.2,,0.4", "empty knob"), ("fbcache:", "nothing after"), ("fbcache:0.2,x", "number"),
                       ("sada-criterion:3", "no knob"), ("warp:1,2", "allowed")]:
        with pytest.raises(ValueError, match=match):
            expand_specs([bad])
    with pytest.raises(ValueError, match="sweep"):
        parse_method("fbcache:0.2,0.4")
    from sadakit.bench import default_methods

    swept = expand_specs(default_methods(sweep=True), sweep=True)  # `sadakit bench --sweep` without --methods
    assert {f"fbcache:{k:g}" for k in SWEEPS["fbcache"]} <= set(swept) and "sada-criterion" in swept
    assert expand_specs(default_methods()) == default_methods()


def test_sweep_run_gives_one_row_per_knob_and_a_curve(sdxl, tmp_path):
    from sadakit.bench.output import _plot_curves

    result = run_bench(sdxl, prompts=["a red square"], seeds=[0], steps=8, methods=["fewer-steps:0.75,0.5", "deepcache:2,4"],
                       repeats=1, call_kwargs={"height": 64, "width": 64}, progress=False)
    rows = {r["method"]: r for r in summarize(result)}
    assert set(rows) == {"baseline", "fewer-steps:0.75", "fewer-steps:0.5", "deepcache:2", "deepcache:4"}
    assert rows["fewer-steps:0.5"]["denoiser_forwards"] < rows["fewer-steps:0.75"]["denoiser_forwards"] < 8
    assert rows["deepcache:4"]["flops_ratio"] < rows["deepcache:2"]["flops_ratio"] < 1.0
    curves = _plot_curves(summarize(result), "psnr_db")
    assert sorted(curves) == ["deepcache", "fewer-steps"] and all(len(c) == 2 for c in curves.values())
    paths = write_outputs(result, tmp_path)
    assert paths["plot"].stat().st_size > 0
    from sadakit.bench import load_result

    assert summarize(load_result(paths["json"])) == summarize(result)  # a run can be re-plotted from its JSON


# --------------------------------------------------------------- peak memory, bundled model

def test_peak_memory_on_cpu_sees_an_allocation():
    import sys

    import torch

    from sadakit.bench.memory import PeakMemory

    with PeakMemory(torch.device("cpu")) as mem:
        block = torch.ones(16 * 2**20)  # 64 MiB, freed before the context ends
        del block
    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM is Linux-only")
    assert mem.method == "vmhwm"
    assert 60 <= mem.peak_mb < 400


def test_peak_memory_fallback_samples_rss():
    """The non-Linux path (psutil sampling), forced here: it sees an allocation held for a while."""
    pytest.importorskip("psutil")
    import time

    import torch

    from sadakit.bench.memory import PeakMemory

    with PeakMemory(torch.device("cpu"), method="rss-sampled") as mem:
        block = torch.ones(16 * 2**20)
        # keep the 64 MiB resident until the 5 ms sampler has seen them (a loaded machine may
        # not schedule the sampling thread within a fixed short sleep), at most 2 s
        deadline = time.monotonic() + 2.0
        while mem._peak - mem._base < 50 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.01)
        del block
    assert 50 <= mem.peak_mb < 400


def test_bench_on_the_bundled_model_has_adherence_columns():
    from sadakit.bench.scorers import judge_for
    from sadakit.loading import default_call_kwargs, default_prompts, load_pipeline

    pipe = load_pipeline("bundled:shapes")
    prompts = default_prompts("bundled:shapes", 2)
    result = run_bench(pipe, prompts=prompts, seeds=[0], steps=6, methods=["fewer-steps:0.5", "fbcache"], repeats=1,
                       call_kwargs=default_call_kwargs("bundled:shapes"), progress=False, scorer=judge_for("bundled:shapes"))
    rows = {r["method"]: r for r in summarize(result)}
    assert set(rows) == {"baseline", "fewer-steps:0.5"} and "fbcache" in result.not_applicable
    for row in rows.values():
        assert 0.0 <= row["adherence"] <= 1.0 and row["adherence"] <= row["adherence_attr"] <= 1.0
    assert "| adherence |" in markdown(result).replace("| adherence | adherence_attr", "| adherence |")
    with pytest.raises(ValueError, match="bundled:shapes"):
        load_pipeline("bundled:cats")


# --------------------------------------------------------------- ControlNet and audio pipelines

def test_bench_on_flux_controlnet_reports_caches_that_need_cache_context():
    from sadakit.loading import default_call_kwargs, load_pipeline

    pipe = load_pipeline("tiny:flux-controlnet")
    kwargs = default_call_kwargs("tiny:flux-controlnet")
    assert kwargs["control_image"].shape[-2:] == (64, 64)
    result = run_bench(pipe, prompts=["a red square"], seeds=[0], steps=6, methods=["fbcache:0.5", "pab:2", "sada"],
                       repeats=1, call_kwargs=kwargs, progress=False)
    assert "cache_context" in result.not_applicable["fbcache:0.5"]
    rows = {r["method"]: r for r in summarize(result)}
    assert set(rows) == {"baseline", "pab:2", "sada"}
    assert rows["pab:2"]["flops_ratio"] < 1.0  # the timestep pre-hook works without pipe.current_timestep


def test_bench_on_musicldm_reports_audio_metrics():
    from sadakit.loading import default_call_kwargs, load_pipeline

    pipe = load_pipeline("tiny:musicldm")
    result = run_bench(pipe, prompts=["a calm piano"], seeds=[0], steps=4, methods=["fewer-steps:0.5", "deepcache:2", "fbcache"],
                       repeats=1, call_kwargs=default_call_kwargs("tiny:musicldm"), progress=False)
    rows = {r["method"]: r for r in summarize(result)}
    assert rows["baseline"]["log_mel_psnr"] == float("inf")
    assert 0 < rows["fewer-steps:0.5"]["log_mel_psnr"] < 200 and rows["fewer-steps:0.5"]["denoiser_forwards"] == 2
    assert rows["deepcache:2"]["flops_ratio"] < 1.0  # a UNet2DConditionModel: DeepCache applies to audio too
    assert "MusicLDMPipeline has a UNet" in result.not_applicable["fbcache"]


def test_adasde_row_runs_at_the_files_nfe(sdxl, tmp_path):
    from sadakit.adasde import DistillConfig, distill_pipeline

    path = tmp_path / "c.safetensors"
    kw = {"height": 64, "width": 64}
    distill_pipeline(sdxl, ["a red square"], DistillConfig(nfe=3, iterations=1, batch_size=2, teacher_factor=2),
                     guidance_scale=5.0, call_kwargs=kw, output=path, progress=False)
    result = run_bench(sdxl, prompts=["a red square"], seeds=[0], steps=10, methods=["adasde"], repeats=1,
                       call_kwargs=kw, adasde_file=str(path), progress=False)
    rows = {r["method"]: r for r in summarize(result)}
    assert result.not_applicable == {}
    assert rows["adasde"]["denoiser_forwards"] == 3 and rows["baseline"]["denoiser_forwards"] == 10
    assert rows["adasde"]["flops_ratio"] < 0.5


def test_cache_dit_on_flux_controlnet_is_not_applicable_because_it_changes_the_output():
    """The reason is measured, not assumed: with nothing cached, cache-dit's patched forward still
    moves the ControlNet pipeline's output far away. If this starts failing, cache-dit was fixed:
    drop the rule in ``CacheDiT.not_applicable``."""
    pytest.importorskip("cache_dit")
    import torch

    from sadakit.bench.harness import compare
    from sadakit.bench.methods import CacheDiT
    from sadakit.bench.runner import call_pipeline
    from sadakit.loading import default_call_kwargs, load_pipeline
    from sadakit.metrics.image import psnr

    pipe = load_pipeline("tiny:flux-controlnet")
    method = CacheDiT(name="cache-dit", knob=1e-5)
    assert "does not reproduce FluxControlNetPipeline" in method.not_applicable(pipe)
    kwargs = {"num_inference_steps": 6, "prompt": "a red square", **default_call_kwargs("tiny:flux-controlnet")}
    runs = compare(pipe, lambda kw: call_pipeline(pipe, kw), [parse_method("baseline"), method],
                   lambda: {**kwargs, "generator": torch.Generator().manual_seed(0)}, repeats=0)
    assert psnr(runs["cache-dit:1e-05"].output, runs["baseline"].output) < 30.0


def test_cli_shuts_the_process_group_down_after_a_command(tmp_path, monkeypatch):
    """A rank that exits with its gloo group alive can SIGABRT at interpreter exit (seen in CI)."""
    import torch.distributed as dist

    from sadakit import cli

    def command(args):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: type("Args", (), {"func": staticmethod(command)})())
    assert cli.main([]) == 0
    assert not dist.is_initialized()


def test_bench_on_wan_runs_the_video_caches_each_knob_a_row():
    from sadakit.loading import default_call_kwargs, load_pipeline

    pipe = load_pipeline("tiny:wan")
    methods = ["sada", "fewer-steps:0.5", "fbcache:0.2,0.5", "magcache:0.1", "taylorseer:3", "pab:2", "cache-dit:0.3,0.6",
               "fastercache"]
    result = run_bench(pipe, prompts=["a red ball rolling"], seeds=[0], steps=8, methods=methods, repeats=1,
                       call_kwargs=default_call_kwargs("tiny:wan"), progress=False, sweep=False)
    rows = {r["method"]: r for r in summarize(result)}
    expected = {"baseline", "sada", "fewer-steps:0.5", "fbcache:0.2", "fbcache:0.5", "magcache:0.1", "taylorseer:3",
                "cache-dit:0.3", "cache-dit:0.6"}
    assert set(rows) == expected, result.not_applicable
    # one cache per block shared by the cond and uncond calls: refused with the reason
    assert "separate calls" in result.not_applicable["fastercache"]
    assert "PAB's hook keeps one attention cache per block" in result.not_applicable["pab:2"]
    for name, row in rows.items():  # per-frame and temporal fidelity for every row
        assert row["psnr_db"] > 20 and row["temporal_psnr_db"] > 20 and 0.5 < row["ssim"] <= 1, (name, row)
    assert rows["sada"]["denoiser_forwards"] < rows["baseline"]["denoiser_forwards"] == 16  # both CFG branches counted


@pytest.mark.slow  # 20-30 s on this shared CPU; the Wan bench test covers the same machinery by default
def test_bench_on_hunyuan_video_runs_every_peer_each_knob_a_row():
    """Guidance-distilled HunyuanVideo (one call per step): every diffusers cache (FasterCache
    included) and cache-dit serve it, each restored before the next."""
    from sadakit.loading import default_call_kwargs, load_pipeline

    pipe = load_pipeline("tiny:hunyuan_video")
    methods = ["sada", "fbcache:0.5", "magcache:0.1", "taylorseer:3", "pab:2", "fastercache:2", "cache-dit:0.6"]
    result = run_bench(pipe, prompts=["a red ball rolling"], seeds=[0], steps=8, methods=methods, repeats=1,
                       call_kwargs=default_call_kwargs("tiny:hunyuan_video"), progress=False, sweep=False)
    rows = {r["method"]: r for r in summarize(result)}
    assert set(rows) == {"baseline", *methods}, result.not_applicable
    for name, row in rows.items():  # per-frame and temporal fidelity for every row
        assert row["psnr_db"] > 20 and row["temporal_psnr_db"] > 20 and 0.5 < row["ssim"] <= 1, (name, row)
    assert rows["sada"]["denoiser_forwards"] < rows["baseline"]["denoiser_forwards"] == 8


def test_one_cache_per_block_methods_are_refused_for_separate_cfg_calls():
    """PAB and FasterCache keep one cache per block for every call: with the CFG branches as
    separate calls the uncond call would reuse the cond call's attention, so the bench refuses."""
    from sadakit.bench.methods import parse_method
    from sadakit.loading import load_pipeline

    flux, wan = load_pipeline("tiny:flux"), load_pipeline("tiny:wan")
    for spec in ("pab:2", "fastercache:2"):
        method = parse_method(spec)
        assert method.not_applicable_to_call(flux, {"num_inference_steps": 4}) is None  # one call per step
        assert method.not_applicable_to_call(flux, {"true_cfg_scale": 1.0, "negative_prompt": "x"}) is None
        assert "separate calls" in method.not_applicable_to_call(flux, {"true_cfg_scale": 4.0, "negative_prompt": ""})
        assert method.not_applicable_to_call(flux, {"true_cfg_scale": 4.0}) is None  # no negative prompt: no true CFG
        assert "separate calls" in method.not_applicable_to_call(wan, {})  # WanPipeline's default guidance is 5
        assert method.not_applicable_to_call(wan, {"guidance_scale": 1.0}) is None
    assert parse_method("fbcache:0.5").not_applicable_to_call(wan, {}) is None  # its state follows cache_context
