"""The evaluation report as a pure function of episode records: Wilson intervals, lengths,
latency percentiles, interventions, and the JSON/markdown/PNG it writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from vla_robot.data.report import evaluation_report, render_markdown, wilson_interval, write_report
from vla_robot.data.schema import EpisodeRecord, Label


def test_wilson_known_values():
    # reference values (Wilson 1927 score interval, z = 1.96): 8/10 -> [0.4902, 0.9433], 0/10 -> [0, 0.2775]
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(3, 2)


@given(st.integers(1, 500), st.data())
def test_wilson_contains_the_estimate_and_narrows(n, data):
    k = data.draw(st.integers(0, n))
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    lo4, hi4 = wilson_interval(4 * k, 4 * n)
    assert hi4 - lo4 < hi - lo


def rec(i, task, label, length, **kw):
    return EpisodeRecord(episode_index=i, task=task, label=label, length=length, **kw)


def test_report_numbers_match_the_episodes(tmp_path):
    recs = [
        rec(0, "reach", "success", 30, latency_s=[0.010, 0.020]),
        rec(1, "reach", "failure", 90, timeout=True, latency_s=[0.030], interventions=2, intervention_frames=9),
        rec(2, "reach", "success", 60, policy_versions=[1, 2]),
        rec(3, "pick", "failure", 45, latency_s=[0.040]),
        rec(4, "pick", "unlabelled", 15, dropped_frames=3),
    ]
    rep = evaluation_report(recs, fps=30, title="tiny on the twin")
    o = rep["overall"]
    assert (o["episodes"], o["labelled"], o["successes"], o["failures"], o["unlabelled"]) == (5, 4, 2, 2, 1)
    assert o["success_rate"] == 0.5 and o["wilson95"] == pytest.approx(list(wilson_interval(2, 4)))
    assert o["timeouts"] == 1 and o["dropped_frames"] == 3 and o["policy_versions"] == [1, 2]
    assert o["length_frames"]["mean"] == pytest.approx(48.0) and o["length_frames"]["max"] == 90
    assert o["length_s"]["median"] == pytest.approx(45 / 30)
    lat = np.array([10.0, 20.0, 30.0, 40.0])
    assert o["latency_ms"]["n"] == 4
    assert o["latency_ms"]["p50"] == pytest.approx(np.percentile(lat, 50))
    assert o["latency_ms"]["p90"] == pytest.approx(np.percentile(lat, 90))
    assert o["interventions"] == {"takeovers": 2, "episodes_with_takeover": 1, "teleop_frame_share": pytest.approx(9 / 240)}
    reach, pick = rep["tasks"]["reach"], rep["tasks"]["pick"]
    assert reach["success_rate"] == pytest.approx(2 / 3) and reach["wilson95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert pick["success_rate"] == 0.0 and pick["labelled"] == 1 and pick["unlabelled"] == 1

    md = render_markdown(rep)
    assert "Success rate 50.0%" in md and "(2/4 labelled episodes" in md
    assert "| reach | 3 | 2/3 | 66.7% |" in md and "p90" in md
    paths = write_report(rep, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["overall"]["successes"] == 2
    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "report.png" in paths["markdown"].read_text()


def test_report_of_nothing_and_dict_records(tmp_path):
    rep = evaluation_report([])
    assert rep["overall"]["success_rate"] is None and rep["overall"]["latency_ms"] == {"n": 0}
    assert "No labelled episode yet" in render_markdown(rep)
    write_report(rep, tmp_path)  # an empty plot still renders
    rep = evaluation_report([{"episode_index": 0, "task": "t", "label": "success", "length": 3, "extra": 1}])
    assert rep["overall"]["successes"] == 1


def test_labels_have_one_encoding_name_stored_and_reward():
    names = ("success", "failure", "unlabelled")
    assert [Label.of(x) for x in (*names, True, False, None)] == [*names, "success", "failure", "unlabelled"]
    assert [Label(n).stored for n in names] == [1, 0, -1]  # the frames' episode.label column, as recorded before
    assert [Label(n).reward for n in names] == [1, 0, None]  # the learner's and the scheduler's
    assert [Label.from_stored(v) for v in (1, 0, -1)] == list(Label)
    assert [Label.from_reward(r) for r in (1, 0, None)] == list(Label)
    with pytest.raises(ValueError, match="one of success, failure, unlabelled"):
        Label.of("ok")
    with pytest.raises(ValueError, match="1, 0 or -1"):
        Label.from_stored(2)
    with pytest.raises(ValueError, match=r"1 \(success\), 0 \(failure\) or None"):
        Label.from_reward(-1)


def test_journal_rows_keep_the_label_name_and_reject_an_unknown_one():
    row = EpisodeRecord(episode_index=0, task="t", label=True, length=3).to_json()
    assert row["label"] == "success" and type(row["label"]) is str
    assert json.loads(json.dumps(row))["label"] == "success"
    assert EpisodeRecord.from_json(row).label is Label.SUCCESS
    with pytest.raises(ValueError, match="got 'ok'"):
        EpisodeRecord.from_json({**row, "label": "ok"})
