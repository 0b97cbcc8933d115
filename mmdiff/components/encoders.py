"""Conditioning encoders: any ``transformers`` text encoder loaded from a local folder.

The encoder is frozen; prompts become ``(embeddings (B, M, D), mask (B, M))`` for the DiT's
cross-attention. Saved with the pipeline as the folder ``transformers`` itself writes
(safetensors weights, config and tokenizer files) and loaded back without remote code.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..core.checkpoint import CheckpointError, PICKLE_SUFFIXES, resolve_pretrained
from ..registry import register_component

SETTINGS = "mmdiff_text_encoder.json"


@register_component
class TextEncoder(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, max_length: int = 77):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.requires_grad_(False).eval()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.d_model

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, max_length: int | None = None, dtype=None, device=None):
        from transformers import AutoModel, AutoTokenizer

        folder = resolve_pretrained(folder)
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles and not list(folder.glob("*.safetensors")):
            raise CheckpointError(f"{folder} holds only pickle weights ({pickles}); mmdiff loads safetensors only: "
                                  f"re-save it with save_pretrained(safe_serialization=True)")
        settings = json.loads((folder / SETTINGS).read_text()) if (folder / SETTINGS).is_file() else {}
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder, use_safetensors=True)
        if hasattr(model, "get_encoder") and getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()  # T5-style: only the encoder conditions images
        encoder = cls(model, tokenizer, max_length or settings.get("max_length", 77))
        return encoder.to(device=device, dtype=dtype)

    def save_pretrained(self, folder: str | os.PathLike, dtype=None) -> Path:
        folder = Path(folder)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        (folder / SETTINGS).write_text(json.dumps({"max_length": self.max_length}))
        return folder

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        longest = max(len(ids) for ids in self.tokenizer(list(prompts))["input_ids"])
        if longest > self.max_length:  # the encoder sees a fixed number of tokens; say what it drops
            warnings.warn(f"a prompt is {longest} tokens long, more than the text encoder's {self.max_length}: "
                          f"it is cut to its first {self.max_length} tokens")
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(device)
        hidden = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        return hidden.float(), tokens["attention_mask"].bool()
