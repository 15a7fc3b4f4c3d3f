"""The learned success detector (issue 17): trained on real twin-recorded episodes (the real Recorder,
the twin's success check as the label), held out by episode, exported to ONNX and run on onnxruntime."""
import json
import shutil

import numpy as np
import pytest

from vla_robot.data import relabel
from vla_robot.data.reader import iter_episodes
from vla_robot.detector import DetectorError, SuccessDetector, TrainConfig, load_examples, stack, train_detector
from vla_robot.detector.features import episode_features, features_from_arrays, frame_indices
from vla_robot.detector.synthetic import record_twin_dataset
from vla_robot.detector.train import load_torch, predict_torch, split_by_episode

PARITY_TOL = 1e-4  # |P_onnx - P_torch|, on probabilities (the benchmark states the same)
FAST = TrainConfig(steps=150, val_share=0.4)


@pytest.fixture(scope="module")
def twin_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("det") / "twin"
    truth = record_twin_dataset(root, episodes=24, seed=3)
    return root, truth


@pytest.fixture(scope="module")
def trained(twin_ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "detector"
    report = train_detector([twin_ds[0]], out, seed=0, config=FAST, progress=False, log=lambda s: None)
    return out, report


def test_twin_dataset_labels_are_the_twin_success_check(twin_ds):
    root, truth = twin_ds
    recs = [ep.record for ep in iter_episodes(root, with_frames=False)]
    assert [r.label.reward for r in recs] == [int(t["success"]) for t in truth]
    assert [r.meta["twin_success"] for r in recs] == [t["success"] for t in truth]
    assert 0 < sum(t["success"] for t in truth) < len(truth)  # both kinds, or nothing can be learned


def test_detector_beats_chance_on_held_out_episodes(trained):
    _, report = trained
    held = report["held_out"]
    assert report["episodes"]["held_out"] >= 8
    # better than always answering the majority class, and than a coin, on episodes it never saw
    assert held["accuracy"] > held["majority_baseline"] and held["accuracy"] >= 0.7, report["held_out_predictions"]
    assert 0.0 <= held["calibration"]["ece"] <= 1.0 and held["pr"]["average_precision"] > 0.6


def test_held_out_split_is_by_episode(trained, twin_ds):
    out, report = trained
    train = {tuple(k) for k in report["split"]["train"]}
    held = {tuple(k) for k in report["split"]["held_out"]}
    assert not train & held and len(train | held) == len(twin_ds[1])
    held_labels = {p["label"] for p in report["held_out_predictions"]}
    assert held_labels == {0, 1}  # stratified: both classes are held out
    keys = [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("a", 2)]  # same index, other dataset: other episode
    tr, va = split_by_episode(keys, np.array([1, 0, 1, 0, 1, 0]), 0.34, seed=1)
    assert not set(tr) & set(va) and sorted([*tr, *va]) == list(range(6))
    with pytest.raises(ValueError, match="appears twice"):
        split_by_episode([("a", 0), ("a", 0)], np.array([1, 0]), 0.5, seed=0)


def test_onnx_matches_torch_on_the_same_inputs(trained, twin_ds):
    out, _ = trained
    det = SuccessDetector.load(out)
    assert det.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    model = load_torch(out)
    eps = list(iter_episodes(twin_ds[0], with_frames=False))
    batch = stack([episode_features(ep, det.spec) for ep in eps])
    rng = np.random.default_rng(0)
    noise = {"images": rng.integers(0, 256, batch["images"].shape, dtype=np.uint8),
             "state": rng.normal(size=batch["state"].shape).astype(np.float32)}
    for b in (batch, noise):
        p_onnx, p_torch = det.predict_features(b), predict_torch(model, b)
        assert p_onnx.shape == (len(b["state"]),)
        assert np.max(np.abs(p_onnx - p_torch)) <= PARITY_TOL
    # one episode: from its whole arrays, from the dataset, and in a batch, the same input and answer
    ep = eps[0]
    p_whole = det.predict_episode(ep.images(), ep.load_frames()["observation.state"])
    assert p_whole == pytest.approx(det.predict_dataset_episode(ep), abs=1e-6)
    assert p_whole == pytest.approx(det.predict_features(batch)[0], abs=1e-6)


def test_bad_inputs_say_what_was_expected(trained):
    det = SuccessDetector.load(trained[0])
    frames = {"front": np.zeros((10, 64, 64, 3), np.uint8)}
    with pytest.raises(ValueError, match=r"lack camera\(s\) \['wrist'\]"):
        det.predict_episode(frames, np.zeros((10, 6)))
    frames["wrist"] = np.zeros((10, 64, 64, 3), np.float32)
    with pytest.raises(ValueError, match="must be uint8"):
        det.predict_episode(frames, np.zeros((10, 6)))
    with pytest.raises(ValueError, match=r"states must be \[T, 6\]"):
        det.predict_episode(frames, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="batch\\['images'\\] must be uint8"):
        det.predict_features({"images": np.zeros((1, 2), np.uint8), "state": np.zeros((1, 4, 6), np.float32)})
    big = {c: np.zeros((3, 120, 160, 3), np.uint8) for c in ("front", "wrist")}  # other camera size: resized
    f = features_from_arrays(big, np.zeros((3, 6)), det.spec)
    assert f["images"].shape == (2, det.spec.frames, 64, 64, 3)
    assert frame_indices(1, det.spec).tolist() == [0] * det.spec.frames


def test_missing_or_corrupt_detector_is_a_clear_error(trained, tmp_path):
    with pytest.raises(DetectorError, match=f"no success detector at {tmp_path / 'none'}.*vla-robot detector train"):
        SuccessDetector.load(tmp_path / "none")
    bad = tmp_path / "bad"
    shutil.copytree(trained[0], bad)
    onnx, sidecar = bad / "detector.onnx", bad / "detector.json"
    meta = json.loads(sidecar.read_text())
    onnx.write_bytes(onnx.read_bytes()[:2000])  # cut short
    with pytest.raises(DetectorError, match=f"{onnx} does not match its sidecar.*damaged or replaced"):
        SuccessDetector.load(bad)
    import hashlib  # the sidecar vouches for the damaged bytes: onnxruntime itself must refuse them

    sidecar.write_text(json.dumps({**meta, "onnx_sha256": hashlib.sha256(onnx.read_bytes()).hexdigest()}))
    with pytest.raises(DetectorError, match=f"{onnx} cannot be loaded by onnxruntime.*damaged"):
        SuccessDetector.load(onnx)
    good = tmp_path / "mismatched"
    shutil.copytree(trained[0], good)
    meta_one_cam = {**meta, "spec": {**meta["spec"], "cameras": ["front"]}}  # the sha still vouches for the .onnx
    (good / "detector.json").write_text(json.dumps(meta_one_cam))
    with pytest.raises(DetectorError, match="from different detectors"):
        SuccessDetector.load(good)
    sidecar.write_text("{not json")
    with pytest.raises(DetectorError, match=f"{sidecar} is damaged"):
        SuccessDetector.load(sidecar)
    (bad / "detector.onnx").unlink()
    with pytest.raises(DetectorError, match="detector.onnx missing"):
        SuccessDetector.load(bad)


def test_providers_cpu_here_cuda_only_where_usable():
    import os

    import onnxruntime as ort

    from vla_robot.detector.runtime import choose_providers

    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    auto = choose_providers("auto")
    assert auto[-1] == "CPUExecutionProvider" and set(auto) <= set(ort.get_available_providers())
    if not os.path.exists("/dev/nvidiactl"):  # no GPU: CUDA is never asked for, and asking for it says why
        assert auto == ["CPUExecutionProvider"]
        with pytest.raises(DetectorError, match="no usable CUDAExecutionProvider"):
            choose_providers("cuda")
    with pytest.raises(ValueError, match="device must be"):
        choose_providers("tpu")


@pytest.fixture(scope="module")
def unlabelled_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("det") / "unlabelled"
    record_twin_dataset(root, episodes=3, seed=5, labelled=0.0)
    return root


def test_training_needs_labels_of_both_kinds_and_a_dataset(unlabelled_ds, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(unlabelled_ds, ds)
    with pytest.raises(DetectorError, match=r"no labelled episodes in .* \(3 unlabelled\).*dataset relabel"):
        load_examples([ds])
    relabel.relabel(ds, 0, "success")  # a person labels one: the relabel log counts
    with pytest.raises(DetectorError, match="all 1 labelled episodes are labelled success.*both"):
        load_examples([ds])
    relabel.relabel(ds, 2, "failure")
    ex = load_examples([ds], progress=False)
    assert ex.keys == [(str(ds), 0), (str(ds), 2)] and ex.y.tolist() == [1, 0] and ex.skipped_unlabelled == 1
    with pytest.raises(DetectorError, match="is not a recorded vla_robot dataset"):
        load_examples([tmp_path])
    with pytest.raises(DetectorError, match="no such folder"):
        load_examples([tmp_path / "nowhere"])
    with pytest.raises(DetectorError, match=r"cameras \['front', 'wrist'\]; the detector reads \['top'\]"):
        load_examples([ds], cameras=["top"])


def test_cli_trains_predicts_and_refuses_to_overwrite(twin_ds, tmp_path, capsys):
    from vla_robot.cli import main

    out = tmp_path / "det.onnx"
    argv = ["detector", "train", "--dataset", str(twin_ds[0]), "--out", str(out), "--steps", "5",
            "--camera", "wrist"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "held out: accuracy" in said and "split by episode" in said and "ECE" in said
    for name in ("det.onnx", "det.json", "det.pt", "det_report/report.png", "det_report/report.json",
                 "det_report/summary.txt"):
        assert (tmp_path / name).is_file(), name
    assert SuccessDetector.load(out).spec.cameras == ("wrist",)
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main(["detector", "predict", "--detector", str(out), "--dataset", str(twin_ds[0]), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(twin_ds[1]) and all(0.0 <= r["p_success"] <= 1.0 for r in rows)
    assert main(["detector", "train", "--dataset", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a recorded vla_robot dataset" in capsys.readouterr().err
