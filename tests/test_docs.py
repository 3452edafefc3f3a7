"""The plugin tutorial runs as it stands: its Python blocks, in order, in one namespace."""

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_plugin_tutorial_runs(capsys):
    text = (DOCS / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {"__name__": "plugin_tutorial"}
    exec(compile("\n".join(blocks), str(DOCS / "plugins.md"), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "sadakit report (my-wan" in printed and "call streams per step: cond, uncond" in printed
