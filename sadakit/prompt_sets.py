"""Prompt sets for ``generate --prompts``: one row per output, read and checked before loading.

A text file has one prompt per line (blank lines and lines starting with ``#`` are skipped); a
``.jsonl`` file has one JSON object per line with ``prompt`` and optionally ``seed``,
``negative_prompt`` and ``options`` (call arguments for that row, e.g. ``guidance_scale``). A
row without a seed gets ``base_seed + row``, so its output does not depend on how the rows are
split across processes or batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROW_KEYS = {"prompt", "seed", "negative_prompt", "options"}
#: call arguments a row may not set: sadakit sets them per row or per run
RESERVED_OPTIONS = {"prompt", "negative_prompt", "generator", "num_inference_steps", "output_type", "return_dict",
                    "num_images_per_prompt", "num_videos_per_prompt", "num_waveforms_per_prompt", "latents",
                    "callback_on_step_end"}


class PromptSetError(ValueError):
    """A prompt file that cannot be used, with the file and line named."""


@dataclass(frozen=True)
class Row:
    """One output to make."""

    index: int
    prompt: str
    seed: int
    negative_prompt: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def batch_key(self) -> str:
        """Rows with the same key can share one pipeline call."""
        return json.dumps([self.negative_prompt is None, sorted(self.options.items())], default=str)


def read_rows(path: str | Path, base_seed: int = 0) -> list[Row]:
    """The rows of a ``.txt`` or ``.jsonl`` prompt file (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PromptSetError(f"{path}: cannot read the prompt file ({error})") from None
    rows = _jsonl_rows(path, text, base_seed) if path.suffix.lower() == ".jsonl" else _text_rows(text, base_seed)
    if not rows:
        raise PromptSetError(f"{path}: no prompts (one per line, or JSONL objects with a 'prompt')")
    return rows


def rows_from(items: Iterable[str | dict | Row], base_seed: int = 0) -> list[Row]:
    """Rows from Python values: prompts, dicts shaped like the JSONL lines, or rows."""
    rows = []
    for i, item in enumerate(items):
        if isinstance(item, Row):
            rows.append(item if item.index == i else Row(i, item.prompt, item.seed, item.negative_prompt, item.options))
        elif isinstance(item, str):
            rows.append(Row(i, item, base_seed + i))
        elif isinstance(item, dict):
            rows.append(_row_from_object(item, i, base_seed, f"row {i}"))
        else:
            raise PromptSetError(f"row {i}: expected a prompt string, a dict or a Row, got {type(item).__name__}")
    return rows


def _text_rows(text: str, base_seed: int) -> list[Row]:
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    return [Row(i, p, base_seed + i) for i, p in enumerate(prompts)]


def _jsonl_rows(path: Path, text: str, base_seed: int) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptSetError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(value, dict):
            raise PromptSetError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
        rows.append(_row_from_object(value, len(rows), base_seed, f"{path}:{number}"))
    return rows


def _row_from_object(value: dict, index: int, base_seed: int, where: str) -> Row:
    unknown = set(value) - ROW_KEYS
    if unknown:
        raise PromptSetError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(ROW_KEYS)}")
    prompt = value.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptSetError(f"{where}: 'prompt' must be a non-empty string")
    seed = value.get("seed", base_seed + index)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise PromptSetError(f"{where}: 'seed' must be an integer in [0, 2**63), got {seed!r}")
    negative = value.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise PromptSetError(f"{where}: 'negative_prompt' must be a string")
    options = value.get("options", {})
    if not isinstance(options, dict):
        raise PromptSetError(f"{where}: 'options' must be an object of call arguments")
    reserved = set(options) & RESERVED_OPTIONS
    if reserved:
        raise PromptSetError(f"{where}: options {sorted(reserved)} are set by sadakit per row or per run")
    return Row(index, prompt, seed, negative, dict(options))
