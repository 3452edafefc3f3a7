"""The demo's table: machine-independent columns first, wall speed-up last with its spread,
and a busy-machine flag when the wall ratio is far from what the computed work predicts.
Pure formatting of given numbers: nothing here is timed."""

import json

import pytest

from sadakit.demo_table import (
    BUSY_NOTE, TABLE_HEADER, DemoRow, fidelity_parts, machine_busy, markdown_table, picture_caption,
    speedup_text, summary_markdown, table_row,
)


def _row(baseline_times, sada_times, flops_ratio=0.55, **kw) -> DemoRow:
    return DemoRow(
        part="shapes model", method="SADA, 50 Euler steps", steps=50, calls_computed=27, baseline_calls=50,
        baseline_s=sorted(baseline_times)[len(baseline_times) // 2], sada_s=sorted(sada_times)[len(sada_times) // 2],
        flops_ratio=flops_ratio, baseline_times=list(baseline_times), sada_times=list(sada_times),
        fidelity={"psnr_db": 52.34, "ssim": 0.9991, "adherence_baseline": 1.0, "adherence_sada": 0.75}, **kw,
    )


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_header_leads_with_what_does_not_depend_on_the_machine():
    head = _cells(TABLE_HEADER)
    assert head[:2] == ["part", "method"]
    assert head[2].startswith("denoiser calls") and head[3].startswith("denoiser FLOPs")
    assert head[4].startswith("fidelity")
    assert head[-1].startswith("wall speed-up")


def test_row_of_an_idle_machine():
    # pairs: 3.5/1.9 = 1.842, 3.6/1.8 = 2.0, 3.4/2.0 = 1.7 -> median 1.84, range 1.70-2.00
    row = _row([3.5, 3.6, 3.4], [1.9, 1.8, 2.0])
    assert row.predicted_speedup == pytest.approx(1 / 0.55)
    assert not row.machine_busy
    assert _cells(table_row(row)) == [
        "shapes model", "SADA, 50 Euler steps", "27/50", "0.55x",
        "PSNR 52.3 dB, SSIM 0.999, adherence 100%/75%", "1.84x (1.70-2.00, 3 runs)",
    ]


def test_row_far_below_the_prediction_says_the_machine_was_busy():
    row = _row([3.5, 3.6, 3.4], [5.0, 4.8, 5.2])  # median pair 0.70x where the FLOPs predict 1.82x
    assert row.machine_busy
    wall = _cells(table_row(row))[-1]
    assert wall.startswith("0.70x (0.65-0.75, 3 runs); " + BUSY_NOTE)
    assert "1.82x" in wall
    assert _cells(table_row(row))[2:4] == ["27/50", "0.55x"]  # the machine-independent cells are unchanged


def test_row_far_above_the_prediction_is_flagged_too():
    row = _row([7.0], [2.0])  # 3.5x from 45% fewer FLOPs: the baseline run was slowed down
    assert row.machine_busy and BUSY_NOTE in table_row(row)


def test_without_flops_the_calls_predict():
    row = _row([3.0], [2.0], flops_ratio=None)
    assert row.predicted_speedup == pytest.approx(50 / 27)
    assert _cells(table_row(row))[3] == "n/a"
    assert not row.machine_busy  # 1.5x of 1.85x predicted


def test_a_wall_note_replaces_the_busy_check():
    row = _row([0.09], [0.13], wall_note="not the result: sadakit's own overhead")
    assert not row.machine_busy
    assert _cells(table_row(row))[-1] == "0.69x (1 run); not the result: sadakit's own overhead"


@pytest.mark.parametrize(("wall", "predicted", "busy"), [
    (1.2, 2.0, False),  # 60% of the prediction: still believable
    (1.19, 2.0, True),
    (1.9, 2.0, False),
    (3.3, 2.0, False),  # 1.65x the prediction
    (3.4, 2.0, True),
])
def test_machine_busy_thresholds(wall, predicted, busy):
    assert machine_busy(wall, predicted) is busy


def test_speedup_text():
    assert speedup_text([2.0]) == "2.00x (1 run)"
    assert speedup_text([1.6, 2.0, 1.8]) == "1.80x (1.60-2.00, 3 runs)"
    assert speedup_text([1.5, 2.5]) == "2.00x (1.50-2.50, 2 runs)"
    assert speedup_text([1.5, 2.5], runs=False) == "2.00x (1.50-2.50)"
    assert speedup_text([2.0], runs=False) == "2.00x"


def test_fidelity_parts_name_metrics_and_join_adherence_pairs():
    assert fidelity_parts({
        "log_mel_psnr_db": 48.61, "generated_mel_psnr_db": None, "pitch_adherence_baseline": 1.0,
        "pitch_adherence_adasde": 0.875, "fewer_steps_27_rmse": 0.0169, "custom": 3.14159,
    }) == ["log-mel PSNR 48.6 dB", "mel PSNR before vocoder n/a", "pitch adherence 100%/88%",
           "RMSE of 27 plain steps 0.017", "custom 3.14"]


def test_picture_caption_carries_method_calls_speedup_and_psnr():
    caption = picture_caption(_row([3.5, 3.6, 3.4], [1.9, 1.8, 2.0]), about="one prompt per column")
    assert caption == [
        "shapes model: one prompt per column",
        "SADA, 50 Euler steps: 27/50 denoiser calls computed, 0.55x the baseline's FLOPs",
        "vs baseline: PSNR 52.3 dB, SSIM 0.999",
        "wall speed-up 1.84x (1.70-2.00, 3 runs)",
    ]


def test_summary_is_short_and_pasteable():
    rows = [_row([3.5, 3.6, 3.4], [1.9, 1.8, 2.0]), _row([3.5], [5.0])]
    text = summary_markdown(rows, 245.4, {"sadakit": "0.1.0", "torch": "2.11.0", "diffusers": "0.42.1",
                                          "machine": "Linux x86_64, 2 CPUs"})
    lines = text.splitlines()
    assert lines[2] == "sadakit 0.1.0, torch 2.11.0, diffusers 0.42.1, Linux x86_64, 2 CPUs; total 4 min 05 s"
    assert markdown_table(rows) in text
    assert lines[4] == TABLE_HEADER and len(_cells(lines[5])) == len(_cells(TABLE_HEADER))
    assert "1 of 2 parts ran while the machine was busy" in text
    assert len(lines) < 15


def test_run_demo_writes_the_summary_it_prints(tmp_path, capsys):
    import warnings

    from sadakit.demo import run_demo

    def fake_part(out_dir, quick, progress):
        progress.expect(2)
        progress.tick("baseline")
        progress.tick("accelerated")
        return _row([3.5, 3.6, 3.4], [1.9, 1.8, 2.0])

    def skipped_part(out_dir, quick, progress):
        return None

    filters = list(warnings.filters)
    rows = run_demo(tmp_path, quick=True, parts=(fake_part, skipped_part, fake_part))
    assert len(rows) == 2 and warnings.filters == filters
    printed = capsys.readouterr().out
    summary = (tmp_path / "summary.md").read_text()
    assert summary in printed and markdown_table(rows) in summary
    assert "fake_part: 27/50 calls, PSNR 52.3 dB, 1.84x (1.70-2.00) [" in printed  # no terminal: one line
    assert "skipped_part: skipped" in printed
    records = json.loads((tmp_path / "summary.json").read_text())
    assert [r["machine_busy"] for r in records] == [False, False]
    assert records[0]["wall_ratios"] == pytest.approx([3.5 / 1.9, 2.0, 1.7])
