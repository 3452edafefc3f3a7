"""Many outputs from one pipeline: a prompt set, sharded over processes, resumable.

One file per row (PNG, WAV or MP4 by what the pipeline makes, or a plugin's own
:class:`~sadakit.outputs.OutputFormat`) and a JSONL manifest. Under
``torchrun`` or ``accelerate launch`` (any number of nodes sharing the output directory) every
rank takes every ``world``-th row still to do and writes its own outputs and its own manifest
part; rank 0 merges the parts into ``manifest.jsonl``. Each row is seeded by its own seed, so
the files do not depend on the number of processes. Outputs are written under a temporary name
and renamed, so a file that exists is whole; a rerun skips every row whose output exists and
whose manifest entry says ``ok``, and redoes the rest (rows in flight when a run was killed,
rows that failed). A row that fails (an option the pipeline does not take, a non-finite output)
is recorded with its error and the run goes on.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .outputs import OutputFormat
from .prompt_sets import Row, rows_from
from .registry import output_format_of

MANIFEST = "manifest.jsonl"


@dataclass
class RunSummary:
    """What one call of :func:`generate_many` did (this process's share, and the whole set)."""

    rows: int  # rows in the set
    done_before: int  # rows already finished when the run started
    generated: int  # rows this process finished now
    failed: int  # rows this process recorded as failed now
    seconds: float
    manifest: Path | None  # the merged manifest (rank 0), else None

    @property
    def rows_per_second(self) -> float:
        return (self.generated + self.failed) / self.seconds if self.seconds > 0 else 0.0


def output_name(row: Row, fmt: OutputFormat) -> str:
    """The file a row's output is written to (the format's first extension)."""
    return f"{row.index:06d}{fmt.suffixes[0]}"


def generate_many(pipe: Any, rows: Iterable[str | dict | Row], out_dir: str | Path, *, steps: int = 30,
                  call_kwargs: dict | None = None, batch_size: int = 1, base_seed: int = 0, fps: int = 8,
                  progress: bool = True, sampler: str | None = None) -> RunSummary:
    """Make one output per row in ``out_dir`` (see the module docstring).

    ``call_kwargs`` go to every pipeline call (sizes, guidance), a row's ``options`` on top.
    ``batch_size`` rows with the same options share a call (each keeps its own generator;
    SADA decides per sample). ``sampler`` is recorded in the manifest (default: the
    scheduler's class and the steps, plus SADA when the pipeline is accelerated).
    """
    from . import api

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"generate_many: batch_size must be an integer >= 1, got {batch_size!r}")
    rows = rows_from(rows, base_seed)
    fmt = output_format_of(pipe)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = _rank_and_world()
    started = time.perf_counter()
    finished = _finished_rows(out_dir, rows)
    pending = [row for row in rows if row.index not in finished]
    mine = pending[rank::world]
    accelerated = api.is_accelerated(pipe)
    if sampler is None:
        sampler = f"{type(pipe.scheduler).__name__}, {steps} steps" + (" + SADA" if accelerated else "")
    allowed = set(inspect.signature(pipe.__call__).parameters)
    part = out_dir / f"manifest.rank{rank}.jsonl"
    generated = failed = 0
    bar = _progress(len(mine), enabled=progress and rank == 0, world=world)
    with open(part, "a", encoding="utf-8") as log:
        for batch in _batches(mine, batch_size):
            for record in _run_batch(pipe, batch, fmt, out_dir, steps, call_kwargs or {}, allowed, fps, rank,
                                     accelerated, sampler):
                log.write(json.dumps(record, default=str) + "\n")
                log.flush()
                os.fsync(log.fileno())
                generated += record["status"] == "ok"
                failed += record["status"] != "ok"
                bar.update(1)
    bar.close()
    _barrier(world)
    manifest = _merge_manifest(out_dir, rows) if rank == 0 else None
    _barrier(world)
    return RunSummary(len(rows), len(finished), generated, failed, time.perf_counter() - started, manifest)


# ---------------------------------------------------------------------- one batch of rows
def _run_batch(pipe: Any, batch: list[Row], fmt: OutputFormat, out_dir: Path, steps: int, call_kwargs: dict,
               allowed: set[str], fps: int, rank: int, accelerated: bool, sampler: str) -> list[dict]:
    """Generate and write a batch; a failing batch of several rows is retried row by row, so
    one bad row fails alone."""
    name = type(pipe).__name__
    unknown = sorted(set(batch[0].options) - allowed)
    if unknown:
        error = (f"{name} takes no call argument(s) {unknown} (row options); it takes e.g. "
                 f"{', '.join(sorted(a for a in allowed if a not in ('self', 'kwargs'))[:12])}")
        return [_record(row, "error", sampler, error=error) for row in batch]
    started = time.perf_counter()
    try:
        outputs, calls = _generate(pipe, batch, fmt, steps, {**call_kwargs, **batch[0].options}, accelerated)
    except Exception as error:  # noqa: BLE001 - recorded per row, the run goes on
        if len(batch) > 1:
            records = []
            for row in batch:
                records += _run_batch(pipe, [row], fmt, out_dir, steps, call_kwargs, allowed, fps, rank,
                                      accelerated, sampler)
            return records
        return [_record(batch[0], "error", sampler, error=f"{type(error).__name__}: {error}")]
    seconds = (time.perf_counter() - started) / len(batch)
    records = []
    for i, (row, output) in enumerate(zip(batch, outputs)):
        if not _finite(output):
            records.append(_record(row, "error", sampler, error=f"{name} produced non-finite values"))
            continue
        try:
            written, note = _write_atomically(pipe, output, out_dir / output_name(row, fmt), fmt, fps, rank)
        except Exception as error:  # noqa: BLE001
            records.append(_record(row, "error", sampler, error=f"writing failed: {type(error).__name__}: {error}"))
            continue
        records.append(_record(row, "ok", sampler, output=written, seconds=seconds,
                               calls_computed=calls[i] if calls else None, note=note))
    return records


def _finite(output: Any) -> bool:
    """No NaN or inf in a numeric output (a plugin's non-array sample is left to its writer)."""
    try:
        array = np.asarray(output, dtype=np.float32)
    except (TypeError, ValueError):
        return True
    return bool(np.isfinite(array).all())


def _generate(pipe: Any, batch: list[Row], fmt: OutputFormat, steps: int, kwargs: dict, accelerated: bool):
    """(one output per row, calls computed per row or None)."""
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", "cpu")
    generator_device = "cpu" if torch.device(device).type == "mps" else device
    generators = [torch.Generator(device=generator_device).manual_seed(row.seed) for row in batch]
    call = dict(kwargs)
    call["prompt"] = [row.prompt for row in batch]
    if batch[0].negative_prompt is not None:
        call["negative_prompt"] = [row.negative_prompt for row in batch]
    if fmt.per_prompt_arg is not None:
        call[fmt.per_prompt_arg] = 1
    if fmt.output_type is not None:
        call.setdefault("output_type", fmt.output_type)
    out = pipe(num_inference_steps=steps, generator=generators if len(batch) > 1 else generators[0], **call)
    outputs = list(getattr(out, fmt.output_field))
    calls = None
    if accelerated:
        from . import api

        report = api.report(pipe)
        if report is not None and len(report.per_sample_computed) >= len(batch):
            calls = report.per_sample_computed[:len(batch)]
    return outputs, calls


def _write_atomically(pipe: Any, output: Any, target: Path, fmt: OutputFormat, fps: int,
                      rank: int) -> tuple[str, str | None]:
    """Write under a temporary name in the same directory, then rename: a file that exists is
    whole. Returns the file name written (a video falls back to GIF without an MP4 encoder)."""
    temporary = target.with_name(f".{target.stem}.rank{rank}.tmp{target.suffix}")
    written, note = fmt.write(pipe, output, temporary, {"fps": fps})
    written = Path(written)
    if written.suffix != temporary.suffix:
        target = target.with_suffix(written.suffix)
    os.replace(written, target)
    return target.name, note


def _record(row: Row, status: str, sampler: str, output: str | None = None, **fields: Any) -> dict:
    record = {"row": row.index, "prompt": row.prompt, "seed": row.seed, "status": status,
              "output": output if status == "ok" else None, "sampler": sampler, "finished": time.time()}
    if row.negative_prompt is not None:
        record["negative_prompt"] = row.negative_prompt
    if row.options:
        record["options"] = row.options
    record.update({k: v for k, v in fields.items() if v is not None})
    return record


def _batches(rows: list[Row], size: int) -> Iterable[list[Row]]:
    """Consecutive rows with the same options, at most ``size`` per batch."""
    batch: list[Row] = []
    for row in rows:
        if batch and (len(batch) == size or row.batch_key() != batch[0].batch_key()):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


# ---------------------------------------------------------------------- manifest and resumption
def _records(out_dir: Path) -> dict[int, dict]:
    """The latest record per row over every manifest part (any earlier run, any world size)."""
    latest: dict[int, dict] = {}
    for part in sorted(out_dir.glob("manifest.rank*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            row = record.get("row")
            if isinstance(row, int) and (row not in latest or record.get("finished", 0) >= latest[row].get("finished", 0)):
                latest[row] = record
    return latest


def _finished_rows(out_dir: Path, rows: list[Row]) -> set[int]:
    """Rows whose latest record is ``ok`` for the same prompt and seed, and whose file exists."""
    records = _records(out_dir)
    done = set()
    for row in rows:
        record = records.get(row.index)
        if (record is not None and record.get("status") == "ok" and record.get("prompt") == row.prompt
                and record.get("seed") == row.seed and (out_dir / str(record.get("output"))).is_file()):
            done.add(row.index)
    return done


def _merge_manifest(out_dir: Path, rows: list[Row]) -> Path:
    """``manifest.jsonl``: one line per row of the set, in row order (written atomically)."""
    records = _records(out_dir)
    target = out_dir / MANIFEST
    temporary = out_dir / f".{MANIFEST}.tmp"
    with open(temporary, "w", encoding="utf-8") as fh:
        for row in rows:
            record = records.get(row.index)
            if record is not None:
                fh.write(json.dumps(record, default=str) + "\n")
    os.replace(temporary, target)
    for leftover in out_dir.glob(".*.tmp*"):  # written by a process killed before its rename
        leftover.unlink(missing_ok=True)
    return target


# ---------------------------------------------------------------------- processes
def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (torchrun / accelerate launch set both)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _progress(total: int, enabled: bool, world: int):
    from tqdm.auto import tqdm

    label = "rows" if world == 1 else f"rows (rank 0 of {world})"
    return tqdm(total=total, desc=label, unit="row", disable=not enabled)
