"""The OpenVLA-OFT model, natively on stock ``transformers`` and ``timm``.

Module names and parameter names follow the published checkpoints, so their state dicts load as
they are: ``vision_backbone.featurizer.*`` (DINOv2 ViT-L/14 + 4 registers),
``vision_backbone.fused_featurizer.*`` (SigLIP SO400M/14), ``projector.fc1/fc2/fc3``,
``language_model.model.*`` / ``language_model.lm_head.*`` (Llama, padded vocabulary), and the
separately saved ``proprio_projector`` (``fc1``, ``fc2``) and L1 ``action_head`` (``model.*``).

Parallel decoding: one forward pass over
``[BOS] [patches of every image] [proprio] [prompt … 29871] [chunk×dim empty action slots] [</s>]``
with **bidirectional** attention (a 4-D additive mask that only hides right padding; stock
transformers would otherwise attend causally). Action slot embeddings are zero (RoPE gives them
their position), as in OFT, both at inference and when teacher-forcing tokens for training. The
hidden state *before* each action slot predicts it (causal-LM shift), as OFT reads
``hidden[NUM_PATCHES + NUM_PROMPT_TOKENS : … + chunk×dim]``.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vla_robot.policy.config import (
    ACTION_TOKEN_MIN,
    EOS_ID,
    N_ACTION_BINS,
    VOCAB_SIZE,
    PolicyModelConfig,
)

__all__ = [
    "PolicyBatch",
    "FusedVisionBackbone",
    "PrismaticProjector",
    "ProprioProjector",
    "MLPResNet",
    "L1RegressionActionHead",
    "OFTModel",
    "pick_tokens",
]


@dataclass
class PolicyBatch:
    """Model inputs for a batch of observations (what the processor makes)."""

    pixel_values: torch.Tensor  # [B, 6·n_images, S, S], per-tower normalised
    input_ids: torch.Tensor  # [B, L] int64 prompt ids (BOS … 29871), right-padded
    prompt_lengths: torch.Tensor  # [B] int64, true prompt lengths (incl. BOS and 29871)
    proprio: Optional[torch.Tensor] = None  # [B, proprio_dim], normalised

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device=None, dtype=None) -> "PolicyBatch":
        return PolicyBatch(
            pixel_values=self.pixel_values.to(device=device, dtype=dtype),
            input_ids=self.input_ids.to(device=device),
            prompt_lengths=self.prompt_lengths.to(device=device),
            proprio=None if self.proprio is None else self.proprio.to(device=device, dtype=dtype),
        )

    def select(self, index) -> "PolicyBatch":
        """Rows ``index`` (a slice, list or tensor of indices) of the batch."""
        return PolicyBatch(
            self.pixel_values[index], self.input_ids[index], self.prompt_lengths[index],
            None if self.proprio is None else self.proprio[index],
        )

    @staticmethod
    def cat(batches: list["PolicyBatch"], pad_id: int = 32000) -> "PolicyBatch":
        L = max(b.input_ids.shape[1] for b in batches)
        ids = torch.cat([F.pad(b.input_ids, (0, L - b.input_ids.shape[1]), value=pad_id) for b in batches])
        proprio = None if batches[0].proprio is None else torch.cat([b.proprio for b in batches])
        return PolicyBatch(torch.cat([b.pixel_values for b in batches]), ids, torch.cat([b.prompt_lengths for b in batches]), proprio)


def bin_logprobs(logits: torch.Tensor, bins: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) over the 256-bin action slice, at the given bin indices (0..255).

    The token log-probability of SimpleVLA-RL (``logits[..., -320:-64] / T`` → log_softmax →
    gather); the model's teacher forcing and the GRPO loss both use this one function.
    """
    if logits.shape[-1] != N_ACTION_BINS:
        raise ValueError(f"logits must end in the {N_ACTION_BINS}-bin action slice, got shape {tuple(logits.shape)}")
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, -1, bins.long()[..., None])[..., 0]

def pick_tokens(
    logits: torch.Tensor, mode: str = "greedy", temperature: float = 1.6,
    generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin logits ``[B, A, 256]`` → action token ids ``[B, A]`` and their log-probs at
    ``temperature`` (see :meth:`OFTModel.sample_tokens`, which this is the second half of)."""
    logits = logits.float()
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = torch.log_softmax(logits / temperature, dim=-1)
    if mode == "greedy":
        bins = logits.argmax(-1)
    elif mode == "sample":
        probs = logp.exp()
        if generator is None or isinstance(generator, torch.Generator):
            rows = [(probs.reshape(-1, N_ACTION_BINS), generator)]
        else:
            if len(generator) != len(probs):
                raise ValueError(f"one generator per row expected, got {len(generator)} for {len(probs)} rows")
            rows = [(probs[i], g) for i, g in enumerate(generator)]
        picked = []
        for p, g in rows:
            if g is not None and g.device != p.device:
                p = p.to(g.device)  # e.g. a CPU generator with a CUDA model
            picked.append(torch.multinomial(p, 1, generator=g).to(logits.device))
        bins = torch.cat(picked).reshape(logits.shape[:2])
    else:
        raise ValueError(f"mode must be 'greedy' or 'sample', got {mode!r}")
    return bins + ACTION_TOKEN_MIN, torch.gather(logp, -1, bins[..., None])[..., 0]


class LayerScale(nn.Module):
    """timm's LayerScale with its parameter named ``scale_factor`` (HF renames ``gamma``; OFT patches it)."""

    def __init__(self, gamma: torch.Tensor, inplace: bool = False):
        super().__init__()
        self.scale_factor = nn.Parameter(gamma.detach().clone())
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.scale_factor) if self.inplace else x * self.scale_factor


def _create_tower(model_id: str, image_size: int, overrides: dict) -> nn.Module:
    import timm
    from timm.models.vision_transformer import LayerScale as TimmLayerScale

    kwargs = {k: v for k, v in overrides.items() if k != "act_layer" or v is not None}
    tower = timm.create_model(model_id, pretrained=False, num_classes=0, img_size=image_size, **kwargs)
    for name, module in list(tower.named_modules()):
        if isinstance(module, TimmLayerScale):
            parent_name, _, attr = name.rpartition(".")
            parent = tower.get_submodule(parent_name) if parent_name else tower
            setattr(parent, attr, LayerScale(module.gamma, module.inplace))
    if len(tower.blocks) < 2:
        raise ValueError(f"vision tower {model_id} needs >= 2 blocks (features come from the second-to-last)")
    return tower


class FiLMedBlock(nn.Module):
    """OFT+'s FiLM around one ViT block: after attention, ``x = x·(1 + γ) + β`` with γ, β linear in
    the average language embedding (the same for every patch). Parameter names as OFT's
    ``FiLMedVisionTransformerBlock`` (``block.*``, ``scale``, ``shift``)."""

    def __init__(self, block: nn.Module, vision_dim: int, llm_dim: int):
        super().__init__()
        self.block = block
        self.scale = nn.Linear(llm_dim, vision_dim)
        self.shift = nn.Linear(llm_dim, vision_dim)

    def forward(self, x: torch.Tensor, language: torch.Tensor) -> torch.Tensor:
        b = self.block
        gamma, beta = self.scale(language)[:, None], self.shift(language)[:, None]
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
        x = x * (1 + gamma) + beta
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


class FusedVisionBackbone(nn.Module):
    """Two timm ViTs on the same image; patch features of the second-to-last block, concatenated.
    With ``film_llm_dim`` every block is FiLM-conditioned on the average language embedding."""

    def __init__(self, timm_model_ids: list[str], image_size: int, overrides: list[dict], film_llm_dim: int = 0):
        super().__init__()
        self.featurizer = _create_tower(timm_model_ids[0], image_size, overrides[0])
        self.fused_featurizer = _create_tower(timm_model_ids[1], image_size, overrides[1])
        self.embed_dim = self.featurizer.embed_dim + self.fused_featurizer.embed_dim
        self.num_patches = self.featurizer.patch_embed.num_patches
        if self.fused_featurizer.patch_embed.num_patches != self.num_patches:
            raise ValueError("both vision towers must give the same number of patches")
        self.film = film_llm_dim > 0
        if self.film:
            for tower in (self.featurizer, self.fused_featurizer):
                tower.blocks = nn.Sequential(*[FiLMedBlock(b, tower.num_features, film_llm_dim) for b in tower.blocks])

    def _features(self, tower: nn.Module, x: torch.Tensor, language: torch.Tensor | None) -> torch.Tensor:
        index = len(tower.blocks) - 2
        if not self.film:
            return tower.forward_intermediates(x, indices=[index], intermediates_only=True, norm=False, output_fmt="NLC", stop_early=True)[0]
        if language is None:
            raise ValueError("this vision backbone is FiLM-conditioned: it needs the average language embedding")
        x = tower.norm_pre(tower.patch_drop(tower._pos_embed(tower.patch_embed(x))))
        for block in list(tower.blocks)[: index + 1]:
            x = block(x, language)
        return x[:, tower.num_prefix_tokens:]

    def forward(self, pixel_values: torch.Tensor, language: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 6·N, S, S]`` (+ ``[B, llm_dim]`` for FiLM) → ``[B, N·num_patches, embed_dim]`` (image-major, as OFT)."""
        B, C, H, W = pixel_values.shape
        if C % 6:
            raise ValueError(f"pixel_values must have 6 channels per image (3 per tower), got {C}")
        n = C // 6
        x = pixel_values.reshape(B * n, 6, H, W)
        lang = None if language is None else language.repeat_interleave(n, dim=0)
        a = self._features(self.featurizer, x[:, :3], lang)
        b = self._features(self.fused_featurizer, x[:, 3:], lang)
        patches = torch.cat([a, b], dim=2)  # [B·N, P, Ca+Cb]
        return patches.reshape(B, n * patches.shape[1], patches.shape[2])


class PrismaticProjector(nn.Module):
    """The fused 3-layer projector: vision_dim → 4·vision_dim → llm_dim → llm_dim (GELU between)."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim, bias=True)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim, bias=True)
        self.fc3 = nn.Linear(llm_dim, llm_dim, bias=True)
        self.act_fn1, self.act_fn2 = nn.GELU(), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(x)))))


class ProprioProjector(nn.Module):
    """proprio_dim → llm_dim → llm_dim (GELU): one token after the image patches."""

    def __init__(self, llm_dim: int, proprio_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim, bias=True)
        self.fc2 = nn.Linear(llm_dim, llm_dim, bias=True)
        self.act_fn1 = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(proprio)))


class MLPResNetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList([MLPResNetBlock(hidden_dim) for _ in range(num_blocks)])
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """OFT's continuous head: the action_dim slot states of one timestep, concatenated, through an MLP-ResNet."""

    def __init__(self, input_dim: int, hidden_dim: int, action_dim: int, chunk_size: int, num_blocks: int = 2):
        super().__init__()
        self.action_dim, self.chunk_size = action_dim, chunk_size
        self.model = MLPResNet(num_blocks, input_dim * action_dim, hidden_dim, action_dim)

    def predict_action(self, actions_hidden_states: torch.Tensor) -> torch.Tensor:
        """``[B, chunk·dim, D]`` → normalised actions ``[B, chunk, dim]``."""
        B = actions_hidden_states.shape[0]
        return self.model(actions_hidden_states.reshape(B, self.chunk_size, -1))


def _llama_config(cfg: PolicyModelConfig):
    from transformers import LlamaConfig

    c = cfg.llm
    extra = {} if c.rope_theta == 10000.0 else {"rope_theta": c.rope_theta}  # transformers 5 moved RoPE settings
    return LlamaConfig(
        **extra,
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        initializer_range=c.initializer_range,
        pad_token_id=32000,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


class OFTModel(nn.Module):
    """OpenVLA-OFT: fused ViTs → projector → Llama with parallel decoding → discrete or L1 head."""

    def __init__(self, cfg: PolicyModelConfig):
        super().__init__()
        from transformers import LlamaForCausalLM

        self.cfg = cfg
        v = cfg.vision
        llm_dim = cfg.llm.hidden_size
        self.vision_backbone = FusedVisionBackbone(v.timm_model_ids, v.image_size, v.timm_overrides, llm_dim if cfg.film else 0)
        self.projector = PrismaticProjector(self.vision_backbone.embed_dim, llm_dim)
        self.language_model = LlamaForCausalLM(_llama_config(cfg))
        for layer in self.language_model.model.layers:  # attention kernels that read the flag (sdpa, flash)
            layer.self_attn.is_causal = False  # must not add a causal mask on top of ours
        self.proprio_projector = ProprioProjector(llm_dim, cfg.proprio_dim) if cfg.proprio_dim > 0 else None
        self.action_head = (
            L1RegressionActionHead(llm_dim, llm_dim, cfg.action_dim, cfg.chunk_size, cfg.l1_num_blocks) if cfg.head == "l1" else None
        )

    # --- shapes -------------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return len(self.cfg.cameras)

    @property
    def num_prefix_tokens(self) -> int:
        """BOS + image patches + proprio token: the tokens before the prompt text."""
        return 1 + self.num_images * self.vision_backbone.num_patches + (1 if self.proprio_projector is not None else 0)

    @property
    def num_action_tokens(self) -> int:
        return self.cfg.chunk_size * self.cfg.action_dim

    # --- the single parallel-decoding pass ------------------------------------------------------
    def build_inputs(self, batch: PolicyBatch, seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings ``[B, S, D]``, the bidirectional 4-D mask ``[B, 1, S, S]`` and each row's
        index of its first action slot ``[B]``.

        ``seq_len``: a fixed S (static shapes, for CUDA graphs) instead of the longest row's; it must
        be at least :meth:`seq_len_for` of every row. The extra positions are right padding like any
        other (zero embeddings, hidden as keys), and S is then known without reading the lengths
        back from the device, which a captured graph cannot do."""
        if batch.pixel_values.shape[1] != 6 * self.num_images:
            raise ValueError(
                f"pixel_values has {batch.pixel_values.shape[1]} channels; expected {6 * self.num_images} "
                f"(6 per camera, cameras {self.cfg.cameras})"
            )
        embed = self.language_model.get_input_embeddings()
        dtype = embed.weight.dtype
        B = len(batch)
        device = batch.input_ids.device
        ids = batch.input_ids
        language = self.average_language_embedding(batch) if self.cfg.film else None
        patches = self.projector(self.vision_backbone(batch.pixel_values.to(dtype), language))  # [B, N·P, D]
        prefix = [embed(ids[:, :1]), patches]
        if self.proprio_projector is not None:
            if batch.proprio is None:
                raise ValueError(f"this model uses proprio ({self.cfg.proprio_dim} values) but the batch has none")
            prefix.append(self.proprio_projector(batch.proprio.to(dtype).reshape(B, -1)).unsqueeze(1))
        prefix_e = torch.cat(prefix, dim=1)  # [B, K, D]
        K = prefix_e.shape[1]
        A = self.num_action_tokens
        text_len = batch.prompt_lengths - 1  # prompt tokens after BOS
        S = K + int(text_len.max()) + A + 1 if seq_len is None else int(seq_len)
        if S < K + A + 2:
            raise ValueError(f"seq_len {S} is too short: the prefix ({K}), one prompt token, the {A} action slots and </s> need {K + A + 2}")
        j = torch.arange(S - K, device=device)[None, :].expand(B, -1)  # position after the prefix
        is_text = j < text_len[:, None]
        is_eos = j == (text_len + A)[:, None]
        src = torch.gather(ids, 1, (j + 1).clamp(max=ids.shape[1] - 1))
        tok = torch.where(is_text, src, torch.where(is_eos, torch.full_like(src, EOS_ID), torch.zeros_like(src)))
        keep = (is_text | is_eos).unsqueeze(-1).to(dtype)  # action slots and padding: zero embeddings
        seq = torch.cat([prefix_e, embed(tok) * keep], dim=1)
        lengths = K + text_len + A + 1
        key_valid = torch.arange(S, device=device)[None, :] < lengths[:, None]  # [B, S]
        mask = torch.zeros(B, 1, 1, S, dtype=dtype, device=device)
        mask = mask.masked_fill(~key_valid[:, None, None, :], torch.finfo(dtype).min).expand(B, 1, S, S)
        first_action = K + text_len
        return seq, mask, first_action

    def seq_len_for(self, prompt_length: int) -> int:
        """The sequence length of one row whose prompt (BOS … 29871) has ``prompt_length`` ids:
        prefix, prompt text, action slots and ``</s>``."""
        return self.num_prefix_tokens + int(prompt_length) - 1 + self.num_action_tokens + 1

    def average_language_embedding(self, batch: PolicyBatch) -> torch.Tensor:
        """FiLM's input: the mean embedding of the non-action tokens (prompt incl. BOS and 29871, and
        ``</s>``), padding excluded, ``[B, llm_dim]``."""
        embed = self.language_model.get_input_embeddings()
        ids = batch.input_ids
        valid = (torch.arange(ids.shape[1], device=ids.device)[None, :] < batch.prompt_lengths[:, None]).unsqueeze(-1)
        total = (embed(ids) * valid).sum(1) + embed.weight[EOS_ID][None, :]
        return total / (batch.prompt_lengths[:, None] + 1).to(total.dtype)

    def run_llm(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last-layer (final-norm) hidden states of the Llama decoder, attention set by ``mask``."""
        pos = torch.arange(embeds.shape[1], device=embeds.device)[None, :].expand(embeds.shape[0], -1)
        out = self.language_model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state

    def action_hidden_states(self, batch: PolicyBatch, seq_len: int | None = None) -> torch.Tensor:
        """``[B, chunk·dim, D]``: the states that predict each action slot (one position before it).
        ``seq_len``: a static sequence length (see :meth:`build_inputs`)."""
        embeds, mask, first = self.build_inputs(batch, seq_len)
        hidden = self.run_llm(embeds, mask)
        idx = (first - 1)[:, None] + torch.arange(self.num_action_tokens, device=hidden.device)[None, :]
        return torch.gather(hidden, 1, idx[..., None].expand(-1, -1, hidden.shape[-1]))

    # --- discrete head --------------------------------------------------------------------------
    def bin_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the 256 action ids 31744…31999 (index = token − 31744), ``[B, A, 256]``."""
        w = self.language_model.lm_head.weight[ACTION_TOKEN_MIN:VOCAB_SIZE]
        b = self.language_model.lm_head.bias
        return F.linear(hidden, w, None if b is None else b[ACTION_TOKEN_MIN:VOCAB_SIZE])

    def action_logits(self, batch: PolicyBatch, seq_len: int | None = None) -> torch.Tensor:
        """Bin logits of every action slot, ``[B, chunk·dim, 256]`` (differentiable)."""
        self._need_discrete()
        return self.bin_logits(self.action_hidden_states(batch, seq_len))

    def serving_outputs(self, batch: PolicyBatch, seq_len: int | None = None) -> torch.Tensor:
        """What serving reads from the network: bin logits ``[B, chunk·dim, 256]`` (discrete head)
        or normalised actions ``[B, chunk, dim]`` (L1 head). With ``seq_len`` the whole pass has
        static shapes and no host synchronisation, so it can be captured as a CUDA graph; token
        picking (:func:`pick_tokens`) stays outside, where per-row generators live."""
        if self.action_head is not None:
            return self.action_head.predict_action(self.action_hidden_states(batch, seq_len))
        return self.action_logits(batch, seq_len)

    def sample_tokens(
        self, batch: PolicyBatch, mode: str = "greedy", temperature: float = 1.6,
        generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Action token ids ``[B, A]`` (greedy: argmax; sample: categorical at ``temperature``) and
        their log-probs over the 256-bin slice at ``temperature``.

        ``generator``: one for the batch, or one per row (``None`` rows use the global RNG), so that a
        row's sample does not depend on what else is in the batch."""
        return pick_tokens(self.action_logits(batch), mode, temperature, generator)

    def token_logprobs(self, batch: PolicyBatch, tokens: torch.Tensor, temperature: float = 1.6) -> torch.Tensor:
        """Teacher-forced log-probs ``[B, chunk·dim]`` of given action ids over the 256-bin slice at
        ``temperature`` (SimpleVLA-RL's ``logits[..., -320:-64] / T`` → log_softmax → gather)."""
        return bin_logprobs(self.action_logits(batch), self._bins(tokens, len(batch)), temperature)

    def token_entropy(self, batch: PolicyBatch, temperature: float = 1.6) -> torch.Tensor:
        logp = torch.log_softmax(self.action_logits(batch).float() / temperature, -1)
        return -(logp.exp() * logp).sum(-1)

    def sft_loss(self, batch: PolicyBatch, tokens: torch.Tensor, reduction: str = "mean", vocab: str = "full") -> torch.Tensor:
        """OFT's discrete training loss: cross-entropy at the action slots over the full vocabulary
        (``vocab="full"``, as OFT trains) or over the 256 action ids only (``vocab="bins"``: what
        sampling uses; much cheaper for small models whose vocabulary dominates the cost)."""
        self._need_discrete()
        bins = self._bins(tokens, len(batch))
        hidden = self.action_hidden_states(batch)
        if vocab == "full":
            logits, target = self.language_model.lm_head(hidden).float(), bins + ACTION_TOKEN_MIN
        elif vocab == "bins":
            logits, target = self.bin_logits(hidden).float(), bins
        else:
            raise ValueError(f"vocab must be 'full' or 'bins', got {vocab!r}")
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction=reduction)

    # --- L1 head --------------------------------------------------------------------------------
    def l1_actions(self, batch: PolicyBatch) -> torch.Tensor:
        """Normalised continuous actions ``[B, chunk, dim]`` from the L1-regression head."""
        if self.action_head is None:
            raise ValueError("this model has the discrete head; l1_actions needs head='l1'")
        return self.action_head.predict_action(self.action_hidden_states(batch))

    def l1_loss(self, batch: PolicyBatch, normalized_actions: torch.Tensor) -> torch.Tensor:
        pred = self.l1_actions(batch)
        return F.l1_loss(pred.float(), normalized_actions.to(pred.device).float().reshape(pred.shape))

    # --- helpers --------------------------------------------------------------------------------
    def _need_discrete(self) -> None:
        if self.action_head is not None:
            raise ValueError("this model has the L1 regression head; token log-probs need head='discrete'")

    def _bins(self, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, device=self.language_model.lm_head.weight.device).long()
        if tokens.shape != (batch_size, self.num_action_tokens):
            raise ValueError(f"tokens have shape {tuple(tokens.shape)}; expected ({batch_size}, {self.num_action_tokens}) = (batch, chunk·action_dim)")
        bins = tokens - ACTION_TOKEN_MIN
        if bool(((bins < 0) | (bins >= N_ACTION_BINS)).any()):
            raise ValueError(f"tokens must be action ids {ACTION_TOKEN_MIN}..{VOCAB_SIZE - 1}")
        return bins

    def main_state_dict(self) -> dict[str, torch.Tensor]:
        """The keys OFT stores in its safetensors shards (no proprio projector, no action head; with
        FiLM the plain ViT names, without the FiLM layers, as OFT's merged base model has them)."""
        out = {}
        for k, v in self.state_dict().items():
            if k.startswith(("proprio_projector.", "action_head.")):
                continue
            if self.cfg.film and k.startswith("vision_backbone."):
                if ".scale." in k or ".shift." in k:
                    continue
                k = _unfilm_key(k)
            out[k] = v
        return out

    def vision_state_dict(self) -> dict[str, torch.Tensor]:
        """OFT's ``vision_backbone--*checkpoint.pt`` (FiLM models): the whole FiLMed backbone."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("vision_backbone.")}

    def load_main_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` (main-layout keys) renamed to this model's own parameter names."""
        if not self.cfg.film:
            return dict(state)
        own = {_unfilm_key(k): k for k in self.state_dict() if k.startswith("vision_backbone.")}
        return {own.get(k, k): v for k, v in state.items()}


def _unfilm_key(key: str) -> str:
    """``…blocks.3.block.attn…`` → ``…blocks.3.attn…`` (FiLM wrapper removed)."""
    return re.sub(r"(\.blocks\.\d+)\.block\.", r"\1.", key)
