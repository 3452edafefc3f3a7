"""Prompt sets: one file per row, a manifest, sharding across processes, resumption."""

import json
import re
import os
import signal
import subprocess
import sys
import time

import pytest

import sadakit
from sadakit.prompt_sets import PromptSetError, read_rows
from sadakit.testing import tiny_sd_pipeline

from test_bench import _free_port

SD = {"height": 64, "width": 64}


def _manifest(out_dir):
    return [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]


def _files(out_dir):
    return {p.name: p.read_bytes() for p in sorted(out_dir.glob("*.png"))}


def test_prompt_files_are_read_and_bad_lines_named(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("a red square\n\n# a comment\n  a blue circle  \n")
    rows = read_rows(text, base_seed=10)
    assert [(r.index, r.prompt, r.seed) for r in rows] == [(0, "a red square", 10), (1, "a blue circle", 11)]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a", "seed": 5, "negative_prompt": "blur", "options": {"guidance_scale": 2.0}}\n'
                     '\n{"prompt": "b"}\n')
    a, b = read_rows(jsonl, base_seed=3)
    assert (a.seed, a.negative_prompt, a.options, b.seed) == (5, "blur", {"guidance_scale": 2.0}, 4)
    for line, message in [('{"prompt": "a"', "p.jsonl:1: not valid JSON"),
                          ('{"prompt": "a", "steps": 3}', "unknown key(s) ['steps']"),
                          ('{"prompt": ""}', "'prompt' must be a non-empty string"),
                          ('{"prompt": "a", "seed": -1}', "'seed' must be an integer"),
                          ('{"prompt": "a", "options": {"generator": 1}}', "set by sadakit per row or per run"),
                          ("[1, 2]", "expected a JSON object")]:
        jsonl.write_text(line + "\n")
        with pytest.raises(PromptSetError, match=re.escape(message)):
            read_rows(jsonl)
    (tmp_path / "empty.txt").write_text("\n# only a comment\n")
    with pytest.raises(PromptSetError, match="no prompts"):
        read_rows(tmp_path / "empty.txt")


def test_rows_fail_alone_and_a_rerun_does_only_what_is_missing(tmp_path):
    pipe = tiny_sd_pipeline()
    sadakit.accelerate(pipe)
    rows = ["a red square", {"prompt": "a blue circle", "seed": 7},
            {"prompt": "a bad option", "options": {"no_such_argument": 1}},
            {"prompt": "a non-finite output", "options": {"guidance_scale": 1e38}},
            "a green star"]
    out = tmp_path / "out"
    first = sadakit.generate_many(pipe, rows, out, steps=12, call_kwargs=SD, batch_size=2, progress=False)
    assert (first.rows, first.done_before, first.generated, first.failed) == (5, 0, 3, 2)
    records = _manifest(out)
    assert [r["row"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in records] == ["ok", "ok", "error", "error", "ok"]
    assert "no_such_argument" in records[2]["error"] and "non-finite" in records[3]["error"]
    assert records[1]["seed"] == 7 and records[4]["seed"] == 4
    assert all(r["calls_computed"] < 12 for r in records if r["status"] == "ok")  # SADA skipped calls
    assert sorted(_files(out)) == ["000000.png", "000001.png", "000004.png"]
    # the same row alone, seeded by its own seed, gives the same file as inside a batch of two
    single = tmp_path / "single"
    sadakit.generate_many(pipe, [{"prompt": "a blue circle", "seed": 7}], single, steps=12, call_kwargs=SD,
                          progress=False)
    files = _files(out)
    (out / "000004.png").unlink()  # lost: redone; the failed rows are retried, the rest skipped
    again = sadakit.generate_many(pipe, rows, out, steps=12, call_kwargs=SD, batch_size=2, progress=False)
    assert (again.done_before, again.generated, again.failed) == (2, 1, 2)
    assert _files(out) == files and [r["row"] for r in _manifest(out)] == [0, 1, 2, 3, 4]
    assert _files(single)["000000.png"] == files["000001.png"]
    sadakit.remove(pipe)
    with pytest.raises(ValueError, match="batch_size"):
        sadakit.generate_many(pipe, rows, out, batch_size=0)


def _cli(prompts, out, launcher, **popen):
    command = launcher + ["generate", "--pipeline", "tiny:sd", "--prompts", str(prompts), "--out", str(out),
                          "--steps", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _torchrun():
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(_free_port()), "-m", "sadakit"]


def test_two_processes_give_the_files_of_one_even_when_a_rank_is_killed_and_the_run_redone(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a {c} {s}" for c in ("red", "blue", "green") for s in ("square", "circle",
                                                                                         "star", "ring")))
    one, two = tmp_path / "one", tmp_path / "two"
    run = _cli(prompts, one, [sys.executable, "-m", "sadakit"])
    assert run.wait(timeout=600) == 0, run.stderr.read()
    assert len(_files(one)) == 12
    # two ranks; kill one once it has finished a row (torchrun then stops the other)
    run = _cli(prompts, two, _torchrun(), start_new_session=True)
    part = two / "manifest.rank1.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None and not (part.exists() and part.read_text().count("\n") >= 1):
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "torchrun has no workers left to kill"
    os.kill(int(workers[-1]), signal.SIGKILL)
    assert run.wait(timeout=300) != 0  # the run really was cut short
    assert 0 < len(_files(two)) < 12
    # the same command again finishes the set: every row once, the files of the one-process run
    run = _cli(prompts, two, _torchrun())
    assert run.wait(timeout=600) == 0, run.stderr.read()
    strip = lambda records: [{k: v for k, v in r.items() if k not in ("finished", "seconds")} for r in records]
    assert strip(_manifest(two)) == strip(_manifest(one))
    assert [r["row"] for r in _manifest(two)] == list(range(12))
    assert _files(two) == _files(one)
    assert sorted(p.name for p in two.glob("manifest.rank*.jsonl")) == ["manifest.rank0.jsonl", "manifest.rank1.jsonl"]
    assert not list(two.glob(".*"))  # no temporary file left
