"""The files that let transformers' ``AutoProcessor`` load our checkpoints, and so OpenVLA-OFT's
``get_processor`` (``AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)``).

- ``preprocessor_config.json``: OFT's ``PrismaticImageProcessor`` settings, with an ``auto_map`` that
  names ``processing_prismatic.PrismaticImageProcessor`` / ``.PrismaticProcessor``;
- ``processing_prismatic.py``: our own module for those classes (vla_robot/policy/hf_processing.py,
  copied), since transformers imports what ``auto_map`` names from the checkpoint directory;
- for our built-in byte tokenizer, the same tokenizer as transformers files (``tokenizer.json`` …),
  because the processor loads its tokenizer with ``AutoTokenizer``. A checkpoint with its own Llama
  tokenizer already has them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vla_robot.policy.tokenizer import ByteTokenizer

__all__ = ["PROCESSING_MODULE", "preprocessor_config", "write_hf_processor", "byte_tokenizer_for_transformers"]

PROCESSING_MODULE = "processing_prismatic.py"  # the file name auto_map's "processing_prismatic.*" resolves to
_SOURCE = Path(__file__).with_name("hf_processing.py")


def preprocessor_config(runtime) -> dict[str, Any]:
    """OFT's ``PrismaticImageProcessor`` settings (per-tower normalisation, resize-naive)."""
    S = runtime.cfg.vision.image_size
    mean, std = runtime.processor.tower_mean_std
    module = PROCESSING_MODULE.removesuffix(".py")
    return {
        "auto_map": {
            "AutoImageProcessor": f"{module}.PrismaticImageProcessor",
            "AutoProcessor": f"{module}.PrismaticProcessor",
        },
        "image_processor_type": "PrismaticImageProcessor",
        "processor_class": "PrismaticProcessor",
        "image_resize_strategy": "resize-naive",
        "use_fused_vision_backbone": True,
        "input_sizes": [[3, S, S], [3, S, S]],
        "interpolations": ["bicubic", "bicubic"],
        "means": [list(m) for m in mean],
        "stds": [list(s) for s in std],
    }


def byte_tokenizer_for_transformers(tok: ByteTokenizer):
    """Our :class:`ByteTokenizer` as a ``PreTrainedTokenizerFast`` with the same ids: BOS, then
    ``byte_offset + b`` for each UTF-8 byte (byte-level pre-tokenizer, one vocabulary entry per byte,
    no merges). The pad id (32000) stays out: ids must be contiguous and OFT's calls never pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    special = {"<unk>": 0, "<s>": tok.bos_id, "</s>": tok.eos_id}
    if len(set(special.values())) != 3 or max(special.values()) >= tok.byte_offset:
        raise ValueError(f"byte tokenizer: unk 0, bos {tok.bos_id} and eos {tok.eos_id} must be distinct ids below byte_offset {tok.byte_offset}")
    char = bytes_to_unicode()  # the byte-level pre-tokenizer's byte -> character map
    vocab = {f"<unused_{i}>": i for i in range(tok.byte_offset) if i not in special.values()}
    vocab.update(special)
    vocab.update({char[b]: tok.byte_offset + b for b in range(256)})
    t = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def write_hf_processor(runtime, directory: str | Path, config_name: str = "preprocessor_config.json") -> None:
    """Write the processor files of ``runtime`` into the checkpoint ``directory`` (module docstring)."""
    d = Path(directory)
    (d / config_name).write_text(json.dumps(preprocessor_config(runtime), indent=2))
    shutil.copyfile(_SOURCE, d / PROCESSING_MODULE)
    if isinstance(runtime.processor.tokenizer, ByteTokenizer):
        byte_tokenizer_for_transformers(runtime.processor.tokenizer).save_pretrained(str(d))
