"""The pipeline timeline: reading timeline.csv, the idle fraction, the figure and its CLI
(fmnist/report/timeline_figure.py, workflow/scripts/plot_timeline.py), on schedules written out by
hand."""

from __future__ import annotations

import json
import os

import matplotlib.pyplot as plt
import pytest
from fmnist.report import timeline_figure as bubble
from helpers import DEFAULT_SETTINGS, SCRIPTS_DIR, make_record, run_script

SCRIPT = SCRIPTS_DIR / "plot_timeline.py"
HEADER = "step,stage,microbatch,phase,start_seconds,end_seconds"
"""The header of files from before the clock columns, still read as one clock."""
CLOCK_HEADER = HEADER + ",host,clock_error_seconds"

# Two stages, four micro-batches, every pass 1 s: (stage, micro-batch, phase, start).
GPIPE_2x4 = [
    *((0, m, "forward", m) for m in range(4)),
    *((1, m, "forward", m + 1) for m in range(4)),
    *((1, m, "backward", 5 + 3 - m) for m in range(4)),
    *((0, m, "backward", 6 + 3 - m) for m in range(4)),
]
# 1F1B: stage 0 runs one forward ahead (K - 1 - s warm-up forwards), then alternates.
ONE_F_ONE_B_2x4 = [
    *[(0, m, "forward", t) for m, t in [(0, 0), (1, 1), (2, 4), (3, 6)]],
    *[(0, m, "backward", t) for m, t in [(0, 3), (1, 5), (2, 7), (3, 9)]],
    *[(1, m, "forward", t) for m, t in [(0, 1), (1, 3), (2, 5), (3, 7)]],
    *[(1, m, "backward", t) for m, t in [(0, 2), (1, 4), (2, 6), (3, 8)]],
]


def unit_rows(schedule, step=0, offset=0.0) -> list[tuple]:
    return [(step, s, m, p, offset + t, offset + t + 1.0) for s, m, p, t in schedule]


def sequential_rows(microbatches=4, durations=(2.0, 1.0)) -> list[tuple]:
    """One process, one stage at a time: each micro-batch's forward through every stage,
    then the backwards in reverse; stage s's passes take durations[s] seconds."""
    stages = range(len(durations))
    order = [(s, m, "forward") for m in range(microbatches) for s in stages]
    order += [(s, m, "backward") for m in reversed(range(microbatches)) for s in reversed(stages)]
    rows, now = [], 0.0
    for s, m, phase in order:
        rows.append((0, s, m, phase, now, now + durations[s]))
        now += durations[s]
    return rows


def write_timeline(path, rows, header=HEADER):
    path.write_text("\n".join([header, *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


def write_run_json(path, engine="distributed", schedule="gpipe", microbatches=4, **params):
    settings = {**DEFAULT_SETTINGS, "microbatches": microbatches, **params}
    if engine is None:  # a run.json of a version before the engines
        settings = {k: v for k, v in settings.items() if k not in ("engine", "schedule")}
    else:
        settings |= {"engine": engine, "schedule": schedule}
    path.write_text(json.dumps(make_record("r", settings), indent=2) + "\n")
    return path


def measured(tmp_path, rows, microbatches=4) -> bubble.Idle:
    path = write_timeline(tmp_path / "timeline.csv", rows)
    timeline = bubble.read_timeline(path)
    bubble.check_timeline(timeline, microbatches, path)
    return bubble.idle_fractions(timeline, microbatches)


# --------------------------------------------------------------------------- the numbers


def test_gpipe_formula():
    assert bubble.gpipe_bubble(2, 4) == 1 / 5
    assert bubble.gpipe_bubble(4, 8) == 3 / 11
    assert bubble.gpipe_bubble(1, 4) == 0.0  # one stage never waits for another


def test_a_perfect_gpipe_schedule_measures_exactly_its_formula(tmp_path):
    idle = measured(tmp_path, unit_rows(GPIPE_2x4))
    assert (idle.stages, idle.microbatches) == (2, 4)
    assert idle.fraction == 1 / 5 == idle.gpipe
    assert idle.per_stage == (1 / 5, 1 / 5)
    assert idle.per_step == {0: 1 / 5}


def test_one_process_running_one_stage_at_a_time_idles_half_the_time(tmp_path):
    # Stage 0 busy 16 s and stage 1 8 s of a 24 s step: nothing overlaps, so the idle
    # fraction is 1 - 1/K = 0.5 for every M, far from the formula's 0.2.
    idle = measured(tmp_path, sequential_rows())
    assert idle.fraction == 0.5
    assert idle.per_stage == pytest.approx((1 / 3, 2 / 3))
    assert idle.gpipe == 1 / 5


def test_1f1b_has_the_gpipe_bubble_and_the_mean_is_over_steps(tmp_path):
    # Two steps with a 1 s gap (the optimizer) between them: the gap is in neither span.
    rows = unit_rows(ONE_F_ONE_B_2x4) + unit_rows(ONE_F_ONE_B_2x4, step=1, offset=11.0)
    idle = measured(tmp_path, rows)
    assert idle.per_step == {0: 1 / 5, 1: 1 / 5}
    assert idle.fraction == 1 / 5
    assert idle.per_stage == (1 / 5, 1 / 5)


def test_rows_in_any_order_measure_the_same(tmp_path):
    assert measured(tmp_path, unit_rows(GPIPE_2x4)[::-1]).fraction == 1 / 5


# --------------------------------------------------------------------------- bad files


def replace_cell(rows, index, column, value) -> list[tuple]:
    row = list(rows[index])
    row[bubble.COLUMNS.index(column)] = value
    return [*rows[:index], tuple(row), *rows[index + 1 :]]


GOOD = unit_rows(GPIPE_2x4)


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (
            "step,stage,microbatch,start_seconds,end_seconds,host,clock_error_seconds",
            [(*r[:3], *r[4:], "h", 0.0) for r in GOOD],
            "timeline.csv: missing column(s) phase; the header must be " + CLOCK_HEADER,
        ),
        (CLOCK_HEADER + ",note", [(*r, "h", 0.0, "x") for r in GOOD], "unknown column(s) note"),
        (
            HEADER,
            replace_cell(GOOD, 2, "start_seconds", -0.5),
            "row 4, column start_seconds: -0.5 is less than the minimum of 0",
        ),
        (
            HEADER,
            replace_cell(GOOD, 2, "end_seconds", 1.5),
            "row 4, column end_seconds: 1.5 is before start_seconds 2.0",
        ),
        (
            HEADER,
            replace_cell(GOOD, 5, "phase", "sideways"),
            "row 7, column phase: 'sideways' is not one of ['forward', 'backward', 'weight']",
        ),
        (HEADER, replace_cell(GOOD, 0, "stage", "1.5"), "row 2, column stage: '1.5' is not an"),
        (HEADER, replace_cell(GOOD, 0, "end_seconds", "nan"), "column end_seconds: 'nan' is not"),
        (HEADER, [*GOOD, (0, 0, 1)], "row 18: expected 6 values, got 3"),
    ],
    ids=[
        "missing-column",
        "extra-column",
        "negative",
        "end-before-start",
        "phase",
        "int",
        "nan",
        "short",
    ],
)
def test_a_bad_row_is_an_error_naming_file_row_and_column(tmp_path, header, rows, message):
    path = write_timeline(tmp_path / "timeline.csv", rows, header)
    with pytest.raises(bubble.TimelineError) as caught:
        bubble.read_timeline(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            GOOD[:-1],
            "step 0 has 15 of its 16 passes (2 stages x 4 micro-batches x 2): "
            "no backward of micro-batch 3 on stage 0",
        ),
        ([*GOOD, GOOD[3]], "row 18 (step 0, stage 0, micro-batch 3 forward) is there twice"),
        (
            replace_cell(GOOD, 4, "microbatch", 4),
            "row 6, column microbatch: 4 is not below run.json's params.microbatches (4)",
        ),
        ([r for r in GOOD if r[1] == 1], "stages are not 0..K-1: no row of stage 0"),
        (
            replace_cell(GOOD, 1, "end_seconds", 2.5),
            "stage 0 runs two passes at once: row 4 (step 0, stage 0, micro-batch 2 forward) "
            "starts at 2.0 s, before row 3 (step 0, stage 0, micro-batch 1 forward) ends at 2.5 s",
        ),
        ([(*r[:4], 0.0, 0.0) for r in GOOD], "step 0 takes no time"),
    ],
    ids=["incomplete", "twice", "microbatch", "stages", "overlap", "no-time"],
)
def test_rows_that_do_not_make_whole_steps_are_an_error(tmp_path, rows, message):
    path = write_timeline(tmp_path / "timeline.csv", rows)
    with pytest.raises(bubble.TimelineError, match="^" + str(path)) as caught:
        bubble.check_timeline(bubble.read_timeline(path), 4, path)
    assert message in str(caught.value)


def test_a_run_json_without_engine_is_an_error_naming_the_key(tmp_path):
    path = write_run_json(tmp_path / "run.json", engine=None)
    with pytest.raises(bubble.runfiles.RunFileError, match="key params.engine: missing"):
        bubble.read_pipeline(path)


# --------------------------------------------------------------------------- the figure


def test_the_figure_names_the_pipeline_and_both_fractions(tmp_path):
    path = write_timeline(tmp_path / "timeline.csv", sequential_rows())
    pipeline = bubble.read_pipeline(write_run_json(tmp_path / "run.json", "single_process"))
    timeline = bubble.read_timeline(path)
    idle = bubble.idle_fractions(timeline, 4)
    fig = bubble.draw_timeline(timeline, pipeline, idle)
    try:
        texts = [t.get_text() for t in fig.texts]
        (ax,) = fig.axes
        lanes = [t.get_text() for t in ax.get_yticklabels()]
        labels = sorted(t.get_text() for t in ax.texts if not t.get_text().startswith("step"))
    finally:
        plt.close(fig)
    assert "single_process engine, gpipe schedule: K = 2 stages, M = 4 micro-batches" in texts
    assert "measured idle fraction 0.50 (GPipe formula (K\u22121)/(M+K\u22121) = 0.20)" in texts
    assert lanes == ["stage 0\nidle 0.33", "stage 1\nidle 0.67"]  # stage 0 on top
    assert labels == sorted(str(m) for m in range(4) for _ in range(4))  # every box labelled


def test_a_slow_first_step_squeezes_no_other(tmp_path):
    """Step 0 takes 10x as long as step 1 (its passes 10 s, not 1 s): each step has an
    equally wide panel on its own time scale, its bracket naming its span."""
    slow = [(0, s, m, p, 10 * t, 10 * t + 10.0) for s, m, p, t in GPIPE_2x4]
    rows = slow + unit_rows(GPIPE_2x4, step=1, offset=200.0)
    path = write_timeline(tmp_path / "timeline.csv", rows)
    timeline = bubble.read_timeline(path)
    pipeline = bubble.read_pipeline(write_run_json(tmp_path / "run.json"))
    fig = bubble.draw_timeline(timeline, pipeline, bubble.idle_fractions(timeline, 4))
    try:
        first, second = fig.axes
        widths = [ax.get_position().width for ax in fig.axes]
        limits = [ax.get_xlim() for ax in fig.axes]
        spans = [
            t.get_text() for ax in fig.axes for t in ax.texts if t.get_text().startswith("step")
        ]
    finally:
        plt.close(fig)
    assert widths[0] == pytest.approx(widths[1])
    assert limits == [(0, pytest.approx(101_000)), (0, pytest.approx(10_100))]  # ms, 1 % room
    assert spans == ["step 0: 100,000.0 ms", "step 1: 10,000.0 ms"]


def run_cli(*args, env=None):
    return run_script(SCRIPT, *args, env=env)


def test_cli_help():
    result = run_cli("--help")
    assert result.returncode == 0 and "--timeline" in result.stdout


def test_cli_writes_png_and_pdf_byte_for_byte_again_without_torch(tmp_path):
    rows = unit_rows(ONE_F_ONE_B_2x4) + unit_rows(ONE_F_ONE_B_2x4, step=1, offset=11.0)
    timeline = write_timeline(tmp_path / "timeline.csv", rows)
    record = write_run_json(tmp_path / "run.json", schedule="1f1b")
    # A fake torch that fails on import proves plot_timeline.py does not import it.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('plot_timeline.py must not import torch')\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    pdfs = []
    for name in ("a", "b"):
        png, pdf = tmp_path / name / "r.png", tmp_path / name / "r.pdf"
        result = run_cli(
            "--timeline", timeline, "--run-json", record, "--png", png, "--pdf", pdf, env=env
        )
        assert result.returncode == 0, result.stderr
        assert "measured idle fraction 0.2000" in result.stdout
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert pdf.read_bytes().startswith(b"%PDF") and b"/FontFile2" in pdf.read_bytes()
        assert sorted(os.listdir(tmp_path / name)) == ["r.pdf", "r.png"]  # no temporaries
        pdfs.append(pdf.read_bytes())
    assert pdfs[0] == pdfs[1]
    assert (tmp_path / "a" / "r.png").read_bytes() == (tmp_path / "b" / "r.png").read_bytes()


def test_cli_bad_input_is_a_one_line_error(tmp_path):
    record = write_run_json(tmp_path / "run.json")
    bad = write_timeline(tmp_path / "bad.csv", replace_cell(GOOD, 0, "phase", "sideways"))
    out = ["--png", tmp_path / "f.png", "--pdf", tmp_path / "f.pdf"]
    for timeline, message in [
        (bad, "bad.csv: row 2, column phase: 'sideways' is not one of"),
        (tmp_path / "missing.csv", "missing.csv: cannot read CSV"),
    ]:
        result = run_cli("--timeline", timeline, "--run-json", record, *out)
        assert result.returncode == 1
        assert result.stderr.startswith("plot_timeline.py: error: ") and message in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "f.png").exists()


def on_hosts(rows, hosts: dict[int, str], error: dict[int, float]) -> list[tuple]:
    """The rows with the clock columns: each stage's host and its clock's error bound."""
    return [(*r, hosts[r[1]], error[r[1]]) for r in rows]


def test_stages_on_two_hosts_say_how_their_clocks_were_aligned(tmp_path):
    rows = on_hosts(GOOD, {0: "node1", 1: "node2"}, {0: 0.0, 1: 0.0004})
    path = write_timeline(tmp_path / "timeline.csv", rows, CLOCK_HEADER)
    timeline = bubble.read_timeline(path)
    bubble.check_timeline(timeline, 4, path)
    assert bubble.clock_note(timeline) == (
        "; hosts node1, node2: clocks aligned at a barrier, within 0.4 ms"
    )
    # On one host (or in a file from before the clock columns) there is one clock.
    one_host = write_timeline(
        tmp_path / "one.csv", on_hosts(GOOD, {0: "n", 1: "n"}, {0: 0, 1: 0}), CLOCK_HEADER
    )
    assert bubble.clock_note(bubble.read_timeline(one_host)) == ""
    older = bubble.read_timeline(write_timeline(tmp_path / "older.csv", GOOD))
    assert bubble.clock_note(older) == "" and set(older["clock_error_seconds"]) == {0.0}


def test_a_negative_clock_error_is_an_error_naming_its_row(tmp_path):
    rows = on_hosts(GOOD, {0: "a", 1: "b"}, {0: 0.0, 1: -1.0})
    path = write_timeline(tmp_path / "timeline.csv", rows, CLOCK_HEADER)
    with pytest.raises(
        bubble.TimelineError, match="row 6, column clock_error_seconds: -1.0 is less"
    ):
        bubble.read_timeline(path)
