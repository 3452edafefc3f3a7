"""One host read per denoiser call, and none while or after the network runs.

On a GPU every value read to the host waits for the device, and every host list turned into a
device tensor is a copy in the stream. On this CPU-only machine the same events are counted
exactly: a dispatch mode sees every ``aten._local_scalar_dense`` (``item()``, ``int()``,
``bool()``, 0-d tensor indexing) and a function mode sees ``tolist`` / ``item`` and every
``torch.tensor(...)`` made from host data, each attributed to the sadakit frame that caused it.
diffusers' own schedulers and pipelines read values too; those are theirs, not counted.
"""

import time
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import sadakit
from sadakit.runtime.hooks import DenoiserHook
from sadakit.testing import tiny_flux_pipeline, tiny_musicldm_pipeline, tiny_sdxl_pipeline

HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu"}


def _sadakit_site():
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/sadakit/" in frame.filename and "/sadakit/testing/" not in frame.filename:
            return frame.filename.split("/sadakit/")[-1], frame.name
    return None


class _Functions(TorchFunctionMode):
    def __init__(self, events):
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS or name == "tensor":
            site = _sadakit_site()
            if site is not None:
                self.events.append(("read" if name != "tensor" else "to-device",) + site)
        return func(*args, **(kwargs or {}))


class _Dispatch(TorchDispatchMode):
    def __init__(self, events):
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            site = _sadakit_site()
            if site is not None:
                self.events.append(("scalar",) + site)
        return func(*args, **(kwargs or {}))


def _generate(make, monkeypatch):
    events: list = []
    serve = DenoiserHook.serve

    def marked_serve(self, *args, **kwargs):  # every denoiser call enters through its door
        events.append(("call", "", ""))
        return serve(self, *args, **kwargs)

    monkeypatch.setattr(DenoiserHook, "serve", marked_serve)
    pipe = make()
    name = type(pipe).__name__
    kwargs = {} if "MusicLDM" in name else {"height": 64, "width": 64, "output_type": "pt"}
    if "Flux" in name:
        kwargs["max_sequence_length"] = 16
    if "MusicLDM" in name:
        kwargs["output_type"] = "np"
    sadakit.accelerate(pipe)
    pipe(["a red square", "a blue circle"], num_inference_steps=20, **kwargs)  # shapes measured, caches warm
    events.clear()
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    first_layer = next(m for m in denoiser.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    markers = [first_layer.register_forward_pre_hook(lambda module, args: events.append(("net", "", "")))]
    try:
        with _Functions(events), _Dispatch(events):
            pipe(["a red square", "a blue circle"], num_inference_steps=20, **kwargs)
    finally:
        for marker in markers:
            marker.remove()
    report = sadakit.report(pipe)
    sadakit.remove(pipe)
    first = events.index(("call", "", ""))
    return _one_per_read(events[first:]), report  # from the first denoiser call on (prompt encoding is per generation)


def _one_per_read(events: list) -> list:
    """``float(t)`` is seen twice, as ``__float__`` and as the ``_local_scalar_dense`` it runs: count it once."""
    merged: list = []
    for event in events:
        if event[0] == "scalar" and merged and merged[-1][0] == "read" and merged[-1][1:] == event[1:]:
            continue
        merged.append(event)
    return merged


@pytest.mark.parametrize("make", [tiny_sdxl_pipeline, tiny_flux_pipeline, tiny_musicldm_pipeline],
                         ids=["sdxl", "flux", "musicldm"])
def test_one_host_read_per_denoiser_call(make, monkeypatch):
    events, report = _generate(make, monkeypatch)
    assert report.denoiser_calls == 20 and report.skipped_calls > 0
    calls = [i for i, e in enumerate(events) if e[0] == "call"]
    assert len(calls) == 20
    windows = [events[a + 1:b] for a, b in zip(calls, calls[1:] + [len(events)])]
    for n, window in enumerate(windows):
        reads = [e for e in window if e[1] == "runtime/host_read.py"]
        assert len(reads) == 1, (n, window)  # the decision's one packed read (the first step: its level)
        if ("net", "", "") in window:  # nothing from the network's launch on: no read or copy while it
            after = window[window.index(("net", "", "")):]  # runs, nor while its output is merged and recorded
            assert [e for e in after if e[0] != "net"] == [], (n, after)
        others = [e for e in window[:window.index(reads[0])] if e[0] != "net"]
        # before the read: only per-generation set-up (group and row-index tensors made once, a
        # plugin's grid read once per generation such as Flux's img_ids)
        assert all(e[2] in ("_start_generation", "index", "decide", "_prepare_call") or e[1].startswith("plugins/")
                   for e in others), (n, others)
    setup = [e for e in events if e[0] not in ("call", "net") and e[1] != "runtime/host_read.py"]
    assert len(setup) <= 6, setup  # per generation, whatever the number of calls


def test_overhead_leaves_out_the_time_the_read_waits_for_the_device(monkeypatch):
    """On a GPU the one read waits for the network queued before it; that wait is the network's
    time, not sadakit's. Simulated here: every read takes 30 ms, counted as a wait as the CUDA
    path counts it, and the report's host overhead stays below it."""
    from sadakit.runtime import host_read, plans, session

    real = host_read.to_host

    def slow_read(values):
        started = time.perf_counter()
        time.sleep(0.03)
        host_read._waited[0] += time.perf_counter() - started
        return real(values)

    monkeypatch.setattr(plans, "to_host", slow_read)
    monkeypatch.setattr(session, "to_host", slow_read)
    pipe = tiny_sdxl_pipeline()
    sadakit.accelerate(pipe)
    started = time.perf_counter()
    pipe(["a red square"], num_inference_steps=10, height=64, width=64, output_type="pt")
    wall = time.perf_counter() - started
    report = sadakit.report(pipe)
    assert wall > 0.03 * report.denoiser_calls
    assert report.overhead_ms_per_call < 30, report.overhead_ms_per_call
    assert report.device_overhead_ms_per_call is None  # no CUDA device here
    sadakit.remove(pipe)
