"""sadakit.quiet: the known third-party noise goes inside the block, and only there."""

import logging
import warnings

import pytest
import torch
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.deprecation_utils import _resolve_dtype
from transformers.utils import logging as transformers_logging

from sadakit.quiet import quiet


def _warn_torch_dtype() -> None:
    """diffusers' own `torch_dtype` deprecation, raised from diffusers' module as in from_pretrained."""
    _resolve_dtype(None, torch.float32)


@pytest.fixture
def user_logging_state():
    """A user's non-default settings: INFO verbosity, transformers' bars off, diffusers' on."""
    before = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity(),
              diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    diffusers_logging.set_verbosity(logging.INFO)
    transformers_logging.set_verbosity(logging.INFO)
    transformers_logging._tqdm_active = False
    diffusers_logging._tqdm_active = True
    yield
    diffusers_logging.set_verbosity(before[0])
    transformers_logging.set_verbosity(before[1])
    diffusers_logging._tqdm_active, transformers_logging._tqdm_active = before[2], before[3]


def test_quiet_restores_filters_verbosity_and_bars(user_logging_state):
    warnings.filterwarnings("error", message="a user's own filter")
    filters = list(warnings.filters)
    logger_filters = {name: list(logging.getLogger(name).filters)
                      for name in ("transformers.utils.import_utils", "diffusers.pipelines.pipeline_utils")}
    with quiet():
        assert len(warnings.filters) > len(filters)
        assert not diffusers_logging.is_progress_bar_enabled()  # loading bars off inside
        warnings.simplefilter("ignore")  # whatever runs inside cannot leak either
    assert warnings.filters == filters
    assert diffusers_logging.get_verbosity() == transformers_logging.get_verbosity() == logging.INFO
    assert diffusers_logging.is_progress_bar_enabled() is True
    assert transformers_logging.is_progress_bar_enabled() is False
    assert {name: list(logging.getLogger(name).filters) for name in logger_filters} == logger_filters


def test_quiet_restores_after_an_exception(user_logging_state):
    filters = list(warnings.filters)
    with pytest.raises(RuntimeError, match="inside"):
        with quiet():
            raise RuntimeError("inside")
    assert warnings.filters == filters
    assert diffusers_logging.is_progress_bar_enabled() is True


def test_quiet_drops_the_known_warning_and_keeps_a_user_one():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet():
            _warn_torch_dtype()
            warnings.warn("the user's own deprecation", FutureWarning)
            # the same text from the user's module is not diffusers' notice: it shows
            warnings.warn("`torch_dtype` is deprecated in my own API", FutureWarning)
        inside = [str(w.message) for w in caught]
        _warn_torch_dtype()  # after the block diffusers' notice shows again
    assert inside == ["the user's own deprecation", "`torch_dtype` is deprecated in my own API"]
    assert str(caught[-1].message).startswith("`torch_dtype` is deprecated and will be removed")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_quiet_drops_known_log_records_only():
    library_root = logging.getLogger("diffusers")  # diffusers' loggers propagate up to here
    pipeline_logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    collect = _Collect()
    library_root.addHandler(collect)
    try:
        with quiet():
            pipeline_logger.warning("The MusicLDMPipeline has been deprecated and will not receive bug fixes")
            pipeline_logger.warning("Expected types for unet: something a user should see")
        pipeline_logger.warning("The MusicLDMPipeline has been deprecated and will not receive bug fixes")
    finally:
        library_root.removeHandler(collect)
    assert collect.messages == [
        "Expected types for unet: something a user should see",
        "The MusicLDMPipeline has been deprecated and will not receive bug fixes",
    ]


def test_cli_commands_run_quietly_and_restore(monkeypatch, capsys):
    """`sadakit demo` (generate, bench) runs its function inside quiet(); `info` does not."""
    from sadakit import cli, demo_command

    seen = {}

    def fake_demo(args):
        seen["demo"] = len(warnings.filters)
        return 0

    filters = list(warnings.filters)
    monkeypatch.setattr(demo_command, "run_command", fake_demo)  # the command's module, registered by name
    assert cli.main(["demo", "--out", "unused"]) == 0
    assert seen["demo"] > len(filters) and warnings.filters == filters
    assert cli.QUIET_COMMANDS == {"demo", "generate", "bench", "info", "tune"}
