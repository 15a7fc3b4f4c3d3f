"""Typed configuration of the OpenVLA-OFT policy: the model's shape (a preset) and how it is run.

Imports only the standard library, so every part of the stack can read a policy description
without torch. Presets live in ``models/policy/<name>.yaml`` and are read with
:func:`vla_robot.config.from_dict` into :class:`PolicyModelConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

# Token layout of the Llama-2 vocabulary as OpenVLA uses it (moojink/openvla-oft constants.py).
VOCAB_SIZE = 32000  # de-tokenisation vocabulary (unpadded); action token id = VOCAB_SIZE - bin
N_ACTION_BINS = 256
ACTION_TOKEN_BEGIN_IDX = VOCAB_SIZE - N_ACTION_BINS - 1  # 31743
ACTION_TOKEN_MIN = VOCAB_SIZE - N_ACTION_BINS  # 31744
ACTION_TOKEN_MAX = VOCAB_SIZE - 1  # 31999
BOS_ID, EOS_ID, EMPTY_TOKEN_ID = 1, 2, 29871  # <s>, </s> (STOP_INDEX), "▁" appended after "Out:"
PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"

# The published OFT vision towers (prism-dinosiglip-224px+7b).
OFT_TIMM_IDS = ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]


@dataclass
class VisionConfig:
    """The fused vision backbone: two timm ViTs, features from the second-to-last block."""

    timm_model_ids: list[str] = field(default_factory=lambda: list(OFT_TIMM_IDS))
    image_size: int = 224
    # per tower: keyword overrides passed to timm.create_model (tiny dims: embed_dim, depth, num_heads)
    timm_overrides: list[dict] = field(default_factory=lambda: [{}, {}])

    def validate(self) -> None:
        if len(self.timm_model_ids) != 2:
            raise ValueError(f"vision.timm_model_ids must name 2 towers (fused backbone), got {self.timm_model_ids}")
        if len(self.timm_overrides) != len(self.timm_model_ids):
            raise ValueError("vision.timm_overrides must have one mapping per tower")
        if self.image_size < 14:
            raise ValueError(f"vision.image_size must be >= 14 pixels, got {self.image_size}")


@dataclass
class LLMConfig:
    """The Llama language model (transformers LlamaConfig fields)."""

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    vocab_size: int = 32064  # padded (32000 + pad_to_multiple_of)
    pad_to_multiple_of: int = 64
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    # std of the normal init of chosen LLM weights, by name part ({"q_proj": 0.3}); random-init presets only
    init_std: dict = field(default_factory=dict)

    def validate(self) -> None:
        for k, v in self.init_std.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"llm.init_std must map weight-name parts to positive numbers, got {k!r}: {v!r}")
        if self.vocab_size < VOCAB_SIZE:
            raise ValueError(f"llm.vocab_size must be >= {VOCAB_SIZE} (action ids are 31744..31999), got {self.vocab_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("llm.hidden_size must be divisible by llm.num_attention_heads")


@dataclass
class PolicyModelConfig:
    """One OpenVLA-OFT model: towers, LLM, heads, chunking, cameras, normalisation."""

    name: str = "oft-7b"
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    head: Literal["discrete", "l1"] = "discrete"
    chunk_size: int = 8
    action_dim: int = 7
    proprio_dim: int = 8  # 0: no proprio token
    cameras: list[str] = field(default_factory=lambda: ["full_image", "wrist_image"])
    normalization: Literal["bounds_q99", "bounds"] = "bounds_q99"
    # What an action token stands for. absolute: a joint target (OFT's ALOHA, LIBERO's EEF deltas are
    # already deltas in the data). delta: the change from the previous target of the chunk (the first
    # from the observed state), so a chunk's targets are state + cumulative sum: sampled tokens then
    # move the arm by small steps inside the statistics' range instead of jumping between targets.
    # Needs proprio_dim == action_dim (the state is the anchor).
    action_space: Literal["absolute", "delta"] = "absolute"
    norm_key: str = ""  # "" = the only key of the statistics
    center_crop: bool = True  # the 90%-area centre crop OFT's training augmentation implies
    jpeg_roundtrip: bool = True  # resize_image_for_policy: JPEG encode/decode before the resize
    tokenizer: str = ""  # "" = the checkpoint's own files; else a file next to the preset
    dataset_statistics: str = ""  # a dataset_statistics.json next to the preset (optional)
    l1_num_blocks: int = 2
    film: bool = False  # OFT+: FiLM language conditioning in every ViT block (ALOHA recipe)

    def validate(self) -> None:
        if self.chunk_size < 1 or self.action_dim < 1:
            raise ValueError("chunk_size and action_dim must be >= 1")
        if self.proprio_dim < 0:
            raise ValueError("proprio_dim must be >= 0 (0 = no proprio)")
        if self.action_space == "delta" and self.proprio_dim != self.action_dim:
            raise ValueError(f"action_space 'delta' adds the actions to the observed state: it needs proprio_dim == "
                             f"action_dim, got {self.proprio_dim} and {self.action_dim}")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be a non-empty list of distinct names, got {self.cameras}")

    @property
    def num_action_tokens(self) -> int:
        return self.chunk_size * self.action_dim


@dataclass
class PolicyConfig:
    """How a node or server loads the policy (the ``policy`` section of a parameter file):
    ``load_policy(**dataclasses.asdict(cfg))``."""

    preset: str = "tiny"  # used when checkpoint is empty
    checkpoint: str = ""
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: Optional[int] = 0
    norm_key: str = ""


@dataclass
class ServingConfig:
    """How the runtime runs inference for a server (the ``serving`` keys of ``config/policy_server.yaml``).

    Static shapes: a request's prefix (image patches, proprio) and action slots have fixed lengths;
    only the prompt varies, so prompts are padded until the sequence is a multiple of ``seq_multiple``
    positions, and batches up to the next of ``batch_buckets`` (rows copied from the first). Each
    (batch bucket, sequence length) then always has the same shapes, which is what a CUDA graph needs."""

    graphs: Literal["auto", "off"] = "auto"  # a CUDA graph per bucket; auto: on when the runtime is on CUDA
    static_shapes: Literal["auto", "on", "off"] = "auto"  # auto: on when graphs are; on: also without graphs
    batch_buckets: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # the sequence padded to a multiple of this: bounds the number of graphs, and 16 keeps the attention
    # mask's rows aligned as memory-efficient SDPA wants them (else it pads the mask in every layer)
    seq_multiple: int = 16

    def validate(self) -> None:
        b = self.batch_buckets
        if not b or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in b) or sorted(set(b)) != list(b):
            raise ValueError(f"batch_buckets must be increasing distinct batch sizes >= 1, like [1, 2, 4, 8], got {b}")
        if self.seq_multiple < 1:
            raise ValueError(f"seq_multiple must be >= 1 position, got {self.seq_multiple}")
        if self.graphs == "auto" and self.static_shapes == "off":
            raise ValueError("graphs 'auto' needs static shapes: set static_shapes to auto or on, or graphs to off")
