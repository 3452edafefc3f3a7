"""The installed torch / torchaudio pair loads together, and a broken pair is named."""

import torch

from sadakit import doctor
from sadakit.cli import main


def test_torchaudio_compiled_library_loads_against_torch():
    check = doctor.check_torch_pair()
    assert check.torchaudio_version is not None, "the test set-up installs torchaudio; it is missing"
    assert check.ok, check.problem
    torch_release = check.torch_version.split("+")[0]
    assert check.torchaudio_version.split("+")[0] == torch_release, (
        f"torch {check.torch_version} with torchaudio {check.torchaudio_version}: not the locked matched pair")


def test_a_pair_that_does_not_load_names_both_versions(monkeypatch, capsys):
    def fail_to_load():
        raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")

    monkeypatch.setattr(doctor, "_load_torchaudio_library", fail_to_load)
    monkeypatch.setattr(doctor, "_installed_version", lambda name: "9.8.7" if name == "torchaudio" else "1.0")
    check = doctor.check_torch_pair()
    assert not check.ok
    assert "torchaudio 9.8.7" in check.problem and f"torch {torch.__version__}" in check.problem
    assert "undefined symbol" in check.problem and "torch==9.8.7" in check.problem
    assert main(["doctor", "--quiet"]) == 1
    assert "does not load against torch" in capsys.readouterr().err


def test_without_torchaudio_the_pair_check_passes(monkeypatch):
    monkeypatch.setattr(doctor, "_installed_version", lambda name: None)
    check = doctor.check_torch_pair()
    assert check.ok and check.torchaudio_version is None
