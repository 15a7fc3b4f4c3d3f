"""Our image preprocessing against OpenVLA-OFT's, as TensorFlow computes it (the table in
tests/data/oft_image_reference.npz, made by tests/data/make_oft_image_reference.py).

OFT trained on TF's pipeline and its deploy code replays it (openvla-oft
experiments/robot/openvla_utils.py: resize_image_for_policy, crop_and_resize, center_crop_image);
issue 19 asks for ours to be within 1 uint8 level of it.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import torch
import numpy as np
import pytest

from vla_robot.policy.image import center_crop, jpeg_roundtrip, lanczos3_resize, preprocess_image

TABLE = Path(__file__).parent / "data" / "oft_image_reference.npz"


@lru_cache(maxsize=1)
def table() -> dict[str, np.ndarray]:
    with np.load(TABLE) as z:
        return {k: z[k] for k in z.files}


def picture(key: str) -> np.ndarray:
    """A stored picture, restored from its column-then-row differences (the script's docstring)."""
    return np.cumsum(np.cumsum(table()[key], axis=0, dtype=np.uint8), axis=1, dtype=np.uint8)


def cases(with_resize: bool) -> list[tuple[str, str, int]]:
    """(case, input picture, output size) of the table; ``with_resize``: only those OFT resizes."""
    out = []
    for case in map(str, table()["cases"]):
        name, size = case.rsplit("_", 1)
        if not with_resize or f"{case}/resized" in table():
            out.append((case, name, int(size)))
    return out


def assert_close(ours: np.ndarray, ref: np.ndarray, what: str, max_differing: float) -> None:
    """Within 1 level everywhere, and equal on all but ``max_differing`` of the values (so a systematic
    off-by-one, such as rounding where TF truncates, fails even though it is within 1)."""
    assert ours.shape == ref.shape and ours.dtype == np.uint8, f"{what}: {ours.dtype} {ours.shape} vs {ref.shape}"
    diff = np.abs(ours.astype(int) - ref.astype(int))
    tf = table()["tf_version"]
    assert diff.max() <= 1, f"{what}: up to {diff.max()} levels from TensorFlow {tf} ({(diff > 1).mean():.2%} of values over 1)"
    assert (diff > 0).mean() <= max_differing, f"{what}: {(diff > 0).mean():.3%} of values differ from TensorFlow {tf}"


def test_the_jpeg_round_trip_decodes_as_tensorflow_does():
    names = sorted({name for _, name, _ in cases(with_resize=True)})
    assert names, "the table has no resized case"
    for name in names:
        img = picture(f"{name}/input")
        assert np.array_equal(jpeg_roundtrip(img), picture(f"{name}/jpeg")), f"{name}: JPEG round trip differs from TF's"
    # why simplejpeg: the same bytes through OpenCV's decoder (accurate IDCT) land many levels away
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    accurate = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(accurate.astype(int) - picture(f"{name}/jpeg")).max() > 2


@pytest.mark.parametrize("jpeg", [False, True])
def test_the_lanczos_resize_is_within_one_level_of_tensorflow(jpeg):
    for case, name, size in cases(with_resize=True):
        img = picture(f"{name}/input")
        ours = lanczos3_resize(jpeg_roundtrip(img) if jpeg else img, size)
        # float sums that land on .5 round either way: a few in ten thousand
        assert_close(ours, picture(f"{case}/resized" if jpeg else f"{case}/resize_only"), f"{case} resize", 0.005)


def test_the_centre_crop_is_tensorflows_crop_and_resize():
    for case, _, _ in cases(with_resize=False):
        src = picture(f"{case}/resized") if f"{case}/resized" in table() else picture(f"{case.rsplit('_', 1)[0]}/input")
        assert_close(center_crop(src), picture(f"{case}/cropped"), f"{case} crop", 0.001)


def test_the_whole_pipeline_is_within_one_level_of_oft():
    for case, name, size in cases(with_resize=False):
        out = preprocess_image(picture(f"{name}/input"), size)
        assert_close(out, picture(f"{case}/cropped"), f"{case} jpeg+resize+crop", 0.001)
    # without the JPEG trip (config jpeg_roundtrip: false): the resize alone, then the crop
    case, name, size = cases(with_resize=True)[0]
    no_jpeg = preprocess_image(picture(f"{name}/input"), size, jpeg=False)
    assert_close(no_jpeg, center_crop(picture(f"{case}/resize_only")), f"{case} resize+crop", 0.005)
    assert not np.array_equal(no_jpeg, preprocess_image(picture(f"{name}/input"), size))


# --- OFT's get_processor on our checkpoints ------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny checkpoint as save_checkpoint writes it, and its runtime."""
    from vla_robot.policy.checkpoint import save_checkpoint
    from vla_robot.policy.runtime import load_policy

    rt = load_policy(preset="tiny", seed=0)
    return rt, save_checkpoint(rt, tmp_path_factory.mktemp("hf") / "tiny_ck")


def observation(seed: int = 0, instruction: str = "Put the red cube in the bowl") -> dict:
    frame = picture("frame/input")
    return {"images": {"front": frame, "wrist": np.ascontiguousarray(frame[::-1])}, "state": np.zeros(6), "instruction": instruction}


def test_ofts_get_processor_loads_our_checkpoint_and_agrees_with_our_processor(saved):
    """OFT's get_processor is ``AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)``; its
    get_vla_action calls ``processor(prompt, image)`` per camera and concatenates pixel_values on dim 1."""
    from PIL import Image
    from transformers import AutoProcessor

    rt, ckpt = saved
    proc = AutoProcessor.from_pretrained(str(ckpt), trust_remote_code=True)
    assert type(proc).__name__ == "PrismaticProcessor" and type(proc.image_processor).__name__ == "PrismaticImageProcessor"
    obs = observation(instruction="Put the red cube in the bowl, schnell über")  # non-ASCII: the byte tokenizer
    ours = rt.processor([obs])
    images = rt.processor.images(obs)  # OFT's deploy preprocessing (JPEG trip, resize, crop), done by us
    prompt = f"In: What action should the robot take to {obs['instruction'].lower()}?\nOut:"
    inputs = [proc(prompt, Image.fromarray(img)) for img in images]
    pixel_values = torch.cat([x["pixel_values"] for x in inputs], dim=1)
    assert pixel_values.shape == ours.pixel_values.shape
    assert torch.equal(pixel_values, ours.pixel_values)  # the same float32 arithmetic, bit for bit
    # OFT's predict_action appends the empty token 29871; ours has it already
    assert inputs[0]["input_ids"][0].tolist() + [29871] == ours.input_ids[0, : int(ours.prompt_lengths[0])].tolist()
    # a frame of another size is resized to the tower's size (resize-naive, bicubic), as OFT's processor does
    big = proc.image_processor(picture("frame/input"), return_tensors="pt")["pixel_values"]
    S = rt.cfg.vision.image_size
    assert big.shape == (1, 6, S, S) and torch.isfinite(big).all()


def test_the_hf_processor_says_what_is_wrong(saved):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(str(saved[1]), trust_remote_code=True)
    with pytest.raises(ValueError, match="image 0 must be a PIL image or a uint8 HxWx3 RGB array, got float32"):
        proc.image_processor(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="2 prompt\\(s\\) but 1 image\\(s\\)"):
        proc(["a", "b"], picture("square/input"), padding=False)
    with pytest.raises(ValueError, match="image_resize_strategy 'letterbox' is not supported"):
        type(proc.image_processor)(image_resize_strategy="letterbox")
