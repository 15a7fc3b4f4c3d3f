"""Recorder configs from ROS parameter files: the shipped ones load, bad values name the key."""
from __future__ import annotations

import pytest

from vla_robot.config import ConfigError, config_dir, from_dict, load_node_config
from vla_robot.data.config import RecorderConfig, RecorderNodeConfig


@pytest.mark.parametrize("graph", ["record_demos", "evaluate", "rl_finetune"])
def test_shipped_parameter_files_load(graph):
    cfg = load_node_config(RecorderNodeConfig, config_dir() / f"{graph}.yaml", "recorder_node")
    assert cfg.cameras == ["front", "wrist"] and "/" in cfg.repo_id


@pytest.mark.parametrize("data, match", [
    ({"recorder": {"vcodec": "mjpeg"}}, "vcodec must be one of h264, hevc, libsvtav1"),
    ({"recorder": {"fps": 0}}, "fps must be an integer in 1..1000"),
    ({"recorder": {"max_pending_s": 0}}, "max_pending_s must be > 0"),
    ({"repo_id": "demos"}, "repo_id must look like 'user/name'"),
    ({"cameras": []}, "cameras must name at least one camera"),
    ({"token_dim": 48}, "token_dim"),  # gone: the on-policy record needs no width
    ({"recorder": {"fsynk": True}}, "fsynk"),
])
def test_bad_values_are_named(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(RecorderNodeConfig, data)


def test_pending_frames_follow_fps():
    assert RecorderConfig(fps=30, max_pending_s=2.0).max_pending_frames == 60
    assert RecorderConfig(fps=1, max_pending_s=0.5).max_pending_frames == 2
