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


def test_two_processes_match_one(tmp_path):
    one = _cli(tmp_path, "one", [sys.executable, "-m", "sadakit"])
    two = _cli(tmp_path, "two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_port", "29517", "-m", "sadakit"])
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
