"""Shared fixtures: tiny offline pipelines (built once per session, restored after each test)."""

import pytest
import torch

# Tiny models gain little from a second thread, and OpenMP spin-waiting makes 2-thread runs
# up to 100x slower when another process shares the cores: one thread everywhere.
torch.set_num_threads(1)


def pytest_configure(config):
    """Stop before collection when torch and torchaudio do not load together.

    Otherwise a mismatched pair shows up as a dozen collection errors deep in diffusers'
    audio imports, with the cause (two versions) nowhere in sight.
    """
    from sadakit.doctor import check_torch_pair

    check = check_torch_pair()
    if not check.ok:
        pytest.exit(f"broken install: {check.problem}", returncode=4)


@pytest.fixture
def flush_denormals():
    """Denormal floats flushed to zero for one test (the analytic testbed's posteriors underflow at
    small sigma, and denormal arithmetic is slow on CPU)."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="session")
def sdxl_pipe():
    from sadakit.testing.pipelines import tiny_sdxl_pipeline

    return tiny_sdxl_pipeline()


@pytest.fixture(scope="session")
def sd_vpred_pipe():
    from sadakit.testing.pipelines import tiny_sd_pipeline

    return tiny_sd_pipeline(prediction_type="v_prediction")


@pytest.fixture
def sdxl(sdxl_pipe):
    """The session's SDXL pipeline, guaranteed plain before and after the test."""
    import sadakit

    sadakit.remove(sdxl_pipe)
    scheduler = sdxl_pipe.scheduler
    yield sdxl_pipe
    sadakit.remove(sdxl_pipe)
    sdxl_pipe.scheduler = scheduler


class CallCounter:
    """Counts real network forwards by watching the first convolution of a UNet."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self.rows = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1
        self.rows += args[0].shape[0]

    def reset(self) -> None:
        self.count = 0
        self.rows = 0

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def unet_counter(sdxl):
    counter = CallCounter(sdxl.unet.conv_in)
    yield counter
    counter.close()
