"""`vla-robot twin ...`: view, excite + sysid end to end on the twin, and bad input."""
import numpy as np
import pytest
import yaml

pytest.importorskip("mujoco")

from vla_robot.cli import main  # noqa: E402


def test_twin_view_writes_a_sheet_of_a_successful_expert_episode(tmp_path, capsys):
    out = tmp_path / "view.png"
    assert main(["twin", "view", "--task", "reach", "--start", "4", "--size", "48", "--frames", "4",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert "expert succeeded" in capsys.readouterr().out


def test_twin_excite_then_sysid_writes_a_result_the_twin_loads(tmp_path, capsys):
    log = tmp_path / "excite.npz"
    assert main(["twin", "excite", "--arm", "twin", "--duration", "1.0", "--out", str(log)]) == 0
    with np.load(log) as z:
        assert z["q_meas"].shape == (30, 6) and np.all(np.diff(z["t"]) > 0)
        assert np.abs(z["q_meas"] - z["q_cmd"]).max() < 0.3  # the arm followed the signal
    res = tmp_path / "sysid.yaml"
    assert main(["twin", "sysid", "--log", str(log), "--joints", "elbow_flex", "--params", "damping",
                 "--max-iters", "10", "--out", str(res)]) == 0
    doc = yaml.safe_load(res.read_text())
    assert doc["robot"] == "so101" and doc["joints"]["elbow_flex"]["damping"] > 0
    assert res.with_suffix(".png").is_file()


def test_twin_cli_bad_input(tmp_path, capsys):
    assert main(["twin", "sysid", "--log", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, t=np.arange(20.0))
    assert main(["twin", "sysid", "--log", str(bad)]) == 2
    assert "missing ['q_cmd', 'q_meas']" in capsys.readouterr().err
    assert main(["twin"]) == 0  # prints the actions
    assert "bench" in capsys.readouterr().out
