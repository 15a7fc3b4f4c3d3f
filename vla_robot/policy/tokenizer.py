"""Prompt tokenizers: the checkpoint's own Llama tokenizer, or a small built-in one for tiny models.

Both give ``encode(text) -> list[int]`` starting with BOS (id 1). The built-in tokenizer maps each
UTF-8 byte ``b`` to ``byte_offset + b`` and keeps the Llama special ids (``<s>`` = 1, ``</s>`` = 2,
``"▁"`` = 29871, pad = 32000), so action ids 31744…31999 mean the same thing for every model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from vla_robot.policy.config import BOS_ID, EMPTY_TOKEN_ID, EOS_ID, PROMPT_TEMPLATE

__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer", "prompt_ids", "TOKENIZER_FILE"]

TOKENIZER_FILE = "vla_tokenizer.json"  # our built-in tokenizer's file name inside a checkpoint


class ByteTokenizer:
    """Byte-level tokenizer that works offline (for the tiny preset and tests)."""

    kind = "byte"

    def __init__(self, byte_offset: int = 3, bos_id: int = BOS_ID, eos_id: int = EOS_ID, pad_id: int = 32000):
        if byte_offset + 256 > EMPTY_TOKEN_ID or byte_offset < 3:
            raise ValueError(f"byte_offset {byte_offset} must leave room for ids 0..2 and stay below {EMPTY_TOKEN_ID - 256}")
        self.byte_offset, self.bos_id, self.eos_id, self.pad_id = byte_offset, bos_id, eos_id, pad_id

    def encode(self, text: str) -> list[int]:
        return [self.bos_id] + [self.byte_offset + b for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - self.byte_offset for i in ids if self.byte_offset <= i < self.byte_offset + 256).decode(
            "utf-8", errors="replace"
        )

    def to_json(self) -> dict:
        return {"kind": self.kind, "byte_offset": self.byte_offset, "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}

    def save(self, directory: str | os.PathLike) -> None:
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ByteTokenizer":
        data = json.loads(Path(path).read_text())
        if data.get("kind") != cls.kind:
            raise ValueError(f"{path}: tokenizer kind is {data.get('kind')!r}; expected 'byte'")
        return cls(**{k: int(v) for k, v in data.items() if k != "kind"})


class HFTokenizer:
    """The checkpoint's own tokenizer files (``tokenizer.json`` / ``tokenizer.model``) via transformers."""

    kind = "hf"

    def __init__(self, directory: str | os.PathLike):
        from transformers import AutoTokenizer

        self.directory = str(directory)
        self.tok = AutoTokenizer.from_pretrained(self.directory, local_files_only=True)
        self.bos_id = self.tok.bos_token_id if self.tok.bos_token_id is not None else BOS_ID
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 32000

    def encode(self, text: str) -> list[int]:
        ids = list(self.tok(text, add_special_tokens=True).input_ids)
        if not ids or ids[0] != self.bos_id:
            ids = [self.bos_id] + ids
        return ids

    def save(self, directory: str | os.PathLike) -> None:
        self.tok.save_pretrained(str(directory))


def load_tokenizer(directory: str | os.PathLike | None, fallback_file: str | os.PathLike | None = None):
    """The tokenizer of a checkpoint directory (its own files first), else ``fallback_file``."""
    if directory is not None:
        d = Path(directory)
        if (d / TOKENIZER_FILE).is_file():
            return ByteTokenizer.from_file(d / TOKENIZER_FILE)
        if (d / "tokenizer.json").is_file() or (d / "tokenizer.model").is_file():
            return HFTokenizer(d)
    if fallback_file:
        return ByteTokenizer.from_file(fallback_file)
    raise FileNotFoundError(
        f"no tokenizer in {directory}: expected tokenizer.json/tokenizer.model (the checkpoint's own) or {TOKENIZER_FILE}"
    )


def prompt_ids(tokenizer, instruction: str) -> list[int]:
    """OFT's prompt, tokenized, ending with the empty token 29871 (as ``predict_action`` ensures)."""
    if not isinstance(instruction, str):
        raise ValueError(f"instruction must be a string, got {type(instruction).__name__}")
    ids = tokenizer.encode(PROMPT_TEMPLATE.format(instruction=instruction.lower()))
    if ids[-1] != EMPTY_TOKEN_ID:
        ids.append(EMPTY_TOKEN_ID)
    return ids
