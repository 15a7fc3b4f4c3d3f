"""The transformers processor of our checkpoints: what OpenVLA-OFT's ``get_processor`` loads.

OFT's ``get_processor`` (openvla-oft ``experiments/robot/openvla_utils.py``) is
``AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)``: transformers reads the
``auto_map`` of the checkpoint's ``preprocessor_config.json`` and imports the module it names from
the checkpoint directory. ``save_checkpoint`` copies THIS file there as ``processing_prismatic.py``
(the name OFT's checkpoints use), so it stands alone: numpy, Pillow and transformers, no vla_robot
import, nothing relative.

The contract, as OFT's ``get_vla_action`` uses it: ``processor(prompt, image)`` returns a
``BatchFeature`` with ``input_ids``, ``attention_mask`` and ``pixel_values`` ``[B, 3·towers, S, S]``
float32; ``processor.image_processor(images)["pixel_values"]`` the images alone. Images arrive already
through OFT's deploy preprocessing (JPEG trip, Lanczos resize, centre crop: vla_robot.policy.image);
here each is resized to its tower's size only if it differs ("resize-naive", bicubic), scaled to
[0, 1], normalised with that tower's mean/std, and the towers are stacked along the channels. The
arithmetic is torchvision's ``to_tensor`` + ``normalize`` in float32 (divide by 255, subtract,
divide), the same as ``PolicyProcessor.pixel_values``.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from PIL import Image
from transformers.image_processing_utils import BatchFeature, ImageProcessingMixin
from transformers.processing_utils import ProcessorMixin

__all__ = ["PrismaticImageProcessor", "PrismaticProcessor"]

_RESAMPLING = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


def _rgb(image: Any, index: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return Image.fromarray(image)
    what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
    raise ValueError(f"image {index} must be a PIL image or a uint8 HxWx3 RGB array, got {what}")


def _per_tower(name: str, values: Any, towers: int, width: int) -> list[list[Any]]:
    rows = [list(v) for v in values]
    if len(rows) != towers or any(len(r) != width for r in rows):
        raise ValueError(f"{name} must hold {towers} entries (one per vision tower) of {width} values each, got {values}")
    return rows


class PrismaticImageProcessor(ImageProcessingMixin):
    """Images → ``pixel_values``, one normalisation per vision tower (2 for the fused DINOv2+SigLIP)."""

    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    def __init__(
        self,
        use_fused_vision_backbone: bool = True,
        image_resize_strategy: str = "resize-naive",
        input_sizes: list[list[int]] | None = None,
        interpolations: list[str] | None = None,
        means: list[list[float]] | None = None,
        stds: list[list[float]] | None = None,
        **kwargs: Any,
    ) -> None:
        if image_resize_strategy != "resize-naive":
            raise ValueError(f"image_resize_strategy {image_resize_strategy!r} is not supported; OFT's checkpoints use 'resize-naive'")
        towers = 2 if use_fused_vision_backbone else 1
        self.use_fused_vision_backbone = bool(use_fused_vision_backbone)
        self.image_resize_strategy = image_resize_strategy
        self.input_sizes = _per_tower("input_sizes", input_sizes or [[3, 224, 224]] * towers, towers, 3)
        self.interpolations = list(interpolations or ["bicubic"] * towers)
        if len(self.interpolations) != towers or any(i not in _RESAMPLING for i in self.interpolations):
            raise ValueError(f"interpolations must be {towers} of {sorted(_RESAMPLING)}, got {interpolations}")
        self.means = _per_tower("means", means or [[0.5, 0.5, 0.5]] * towers, towers, 3)
        self.stds = _per_tower("stds", stds or [[0.5, 0.5, 0.5]] * towers, towers, 3)
        super().__init__(**kwargs)

    def _tower(self, image: Image.Image, tower: int) -> np.ndarray:
        _, height, width = self.input_sizes[tower]
        if image.size != (width, height):
            image = image.resize((width, height), _RESAMPLING[self.interpolations[tower]])
        x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        mean = np.asarray(self.means[tower], np.float32)[:, None, None]
        std = np.asarray(self.stds[tower], np.float32)[:, None, None]
        return (x - mean) / std

    def preprocess(self, images: Any, return_tensors: Any = None, **_: Any) -> BatchFeature:
        """One image or a list → ``{"pixel_values": [B, 3·towers, S, S]}`` (numpy, or ``return_tensors``)."""
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            raise ValueError("images is empty; expected at least one image")
        rgb = [_rgb(im, i) for i, im in enumerate(batch)]
        values = np.stack([np.concatenate([self._tower(im, t) for t in range(len(self.input_sizes))]) for im in rgb])
        return BatchFeature(data={"pixel_values": values}, tensor_type=return_tensors)

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)


class PrismaticProcessor(ProcessorMixin):
    """The image processor and the checkpoint's tokenizer together, as OFT calls them."""

    attributes: ClassVar[list[str]] = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        text: Any,
        images: Any,
        padding: Any = False,
        truncation: Any = None,
        max_length: int | None = None,
        return_tensors: Any = "pt",
    ) -> BatchFeature:
        pixel_values = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        text_inputs = self.tokenizer(text, return_tensors=return_tensors, padding=padding, truncation=truncation, max_length=max_length)
        prompts = 1 if isinstance(text, str) else len(text)
        if len(pixel_values) != prompts:
            raise ValueError(f"{prompts} prompt(s) but {len(pixel_values)} image(s); expected one image per prompt")
        return BatchFeature(data={**text_inputs, "pixel_values": pixel_values})

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)
