"""Does the installed torch / torchaudio pair load together? (``sadakit doctor``)

Why: torchaudio's compiled library links against exactly one torch release and build (CPU or
a CUDA version). A mismatched pair imports as Python and fails only when the library is
loaded, deep inside whatever first touches audio (``undefined symbol:
torch_exception_get_what_without_backtrace``, ``libc10_cuda.so: cannot open shared object``).
This check loads the library up front and names both versions and the fix.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass


@dataclass(frozen=True)
class PairCheck:
    """Result of :func:`check_torch_pair`; ``problem`` is empty when the pair loads."""

    torch_version: str
    torchaudio_version: str | None  # None: torchaudio is not installed (it is optional)
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load_torchaudio_library() -> None:
    """Import torchaudio and load its compiled extension, then call one of its operators.

    ``import torchaudio`` alone may load nothing compiled; ``torchaudio._extension`` is the
    module that dlopens ``lib/_torchaudio*.so`` and ``lib/libtorchaudio*.so``.
    """
    import torch

    importlib.import_module("torchaudio")
    extension = importlib.import_module("torchaudio._extension")
    if not getattr(extension, "_IS_TORCHAUDIO_EXT_AVAILABLE", True):
        raise ImportError("torchaudio was installed without its compiled extension")
    torch.ops._torchaudio.is_align_available()


def check_torch_pair() -> PairCheck:
    """Load torchaudio's compiled library against the installed torch; never raises."""
    import torch

    torch_version = torch.__version__
    audio_version = _installed_version("torchaudio")
    if audio_version is None:
        return PairCheck(torch_version, None)
    try:
        _load_torchaudio_library()
    except Exception as error:  # OSError (undefined symbol, missing CUDA library), ImportError, RuntimeError
        wanted = audio_version.split("+")[0]
        return PairCheck(torch_version, audio_version, problem=(
            f"torchaudio {audio_version} does not load against torch {torch_version}: "
            f"{type(error).__name__}: {error}. torchaudio's compiled library needs the torch release "
            f"and build it was made for (here torch=={wanted}, the same CPU/CUDA build); install a "
            f"matched pair, e.g. `pip install torch=={wanted} torchaudio=={wanted}` (GPU users: from the "
            f"PyTorch index for their CUDA), or run `make setup` for the project's locked pair."))
    return PairCheck(torch_version, audio_version)


def versions_report() -> dict[str, str]:
    """Versions a bug report needs (installed distributions; 'not installed' when absent)."""
    import platform

    import torch

    names = ("sadakit", "torch", "torchaudio", "diffusers", "transformers", "accelerate")
    report = {"python": platform.python_version()}
    report.update({name: _installed_version(name) or "not installed" for name in names})
    report["cuda"] = f"{torch.version.cuda} (available: {torch.cuda.is_available()})" if torch.version.cuda else "none (CPU build)"
    return report
