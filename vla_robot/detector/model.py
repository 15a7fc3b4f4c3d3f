"""The success detector's network (torch): a conv trunk shared by the cameras, a state MLP, one logit.

Each camera's K frames are stacked on the channel axis (3K channels), so the first convolution
already compares the earlier frames with the last ones (progress). The trunk is shared by every
camera; the cameras' feature vectors are concatenated in the spec's order (which camera is which is
their position). The joint state of the K frames is normalized by the training set's mean and
standard deviation (buffers, so they travel into the ONNX graph) and goes through a small MLP.

Inputs are the raw detector inputs of :mod:`vla_robot.detector.features` (uint8 images, float32
state): the scaling to [0, 1] and the normalization happen inside the graph, so ONNX and torch
are given the very same arrays.
"""
from __future__ import annotations

import torch
from torch import nn

from .features import FeatureSpec

__all__ = ["DetectorNet"]


class DetectorNet(nn.Module):
    def __init__(self, spec: FeatureSpec, width: int = 32, hidden: int = 64):
        super().__init__()
        self.spec = spec
        k, (h, w) = spec.frames, spec.image_size

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(4, cout), nn.ReLU()]

        # 4 stride-2 blocks: 64x64 -> 4x4; flattened, not pooled, so *where* the gripper is stays visible
        self.trunk = nn.Sequential(*block(3 * k, width), *block(width, width), *block(width, 2 * width),
                                   *block(2 * width, 2 * width), nn.Flatten())
        with torch.no_grad():
            n_flat = self.trunk(torch.zeros(1, 3 * k, h, w)).shape[1]
        self.camera_proj = nn.Sequential(nn.Linear(n_flat, hidden), nn.ReLU())
        self.state_mlp = nn.Sequential(nn.Linear(k * spec.state_dim, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(hidden * (len(spec.cameras) + 1), hidden), nn.ReLU(),
                                  nn.Linear(hidden, 1))
        self.register_buffer("state_mean", torch.zeros(spec.state_dim))
        self.register_buffer("state_std", torch.ones(spec.state_dim))

    def set_state_stats(self, mean, std) -> None:
        self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.state_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3))

    def logits(self, images: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """images uint8 [N, cameras, K, H, W, 3], state float32 [N, K, D] -> logits [N]."""
        n, c, k, h, w, _ = images.shape
        x = images.to(torch.float32) / 255.0
        x = x.permute(0, 1, 2, 5, 3, 4).reshape(n * c, k * 3, h, w)  # frames x RGB on the channel axis
        cams = self.camera_proj(self.trunk(x)).reshape(n, -1)
        s = ((state - self.state_mean) / self.state_std).reshape(n, -1)
        return self.head(torch.cat([cams, self.state_mlp(s)], dim=1)).squeeze(1)

    def forward(self, images: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """P(success) [N]: what the ONNX graph outputs as ``p_success``."""
        return torch.sigmoid(self.logits(images, state))
