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
    def __init__(self, model: nn.Module, tokenizer, max_length: int = 77, lowercase: bool = False):
        super().__init__()
        self.model, self.tokenizer, self.max_length, self.lowercase = model, tokenizer, max_length, lowercase
        self.requires_grad_(False).eval()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.d_model

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, max_length: int | None = None, dtype=None, device=None):
        folder = resolve_pretrained(folder)
        settings = json.loads((folder / SETTINGS).read_text()) if (folder / SETTINGS).is_file() else {}
        if max_length is not None:
            settings["max_length"] = max_length
        return cls.from_parts(folder, folder, **settings, dtype=dtype, device=device)

    @classmethod
    def from_parts(cls, model_folder: str | os.PathLike, tokenizer_folder: str | os.PathLike, *,
                   max_length: int = 77, lowercase: bool = False, dtype=None, device=None):
        """The encoder from one folder and its tokenizer from another (a diffusers pipeline's
        ``text_encoder/`` and ``tokenizer/``). ``lowercase``: prompts are lower-cased and stripped
        first, as diffusers' PixArt pipelines do."""
        from transformers import AutoModel, AutoTokenizer, T5EncoderModel

        model_folder, tokenizer_folder = resolve_pretrained(model_folder), resolve_pretrained(tokenizer_folder)
        pickles = [p.name for p in model_folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles and not list(model_folder.glob("*.safetensors")):
            raise CheckpointError(f"{model_folder} holds only pickle weights ({pickles}); mmdiff loads safetensors "
                                  f"only: re-save it with save_pretrained(safe_serialization=True)")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
        config = json.loads((model_folder / "config.json").read_text())
        # a T5 encoder saved alone (PixArt's text_encoder/): AutoModel would build the whole T5 around it
        loader = T5EncoderModel if config.get("architectures") == ["T5EncoderModel"] else AutoModel
        model = loader.from_pretrained(model_folder, use_safetensors=True)
        if hasattr(model, "get_encoder") and getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()  # T5-style: only the encoder conditions images
        encoder = cls(model, tokenizer, max_length, lowercase=lowercase)
        return encoder.to(device=device, dtype=dtype)

    def save_pretrained(self, folder: str | os.PathLike, dtype=None) -> Path:
        folder = Path(folder)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        (folder / SETTINGS).write_text(json.dumps({"max_length": self.max_length, "lowercase": self.lowercase}))
        return folder

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        prompts = [p.lower().strip() for p in prompts] if self.lowercase else list(prompts)
        longest = max(len(ids) for ids in self.tokenizer(list(prompts))["input_ids"])
        if longest > self.max_length:  # the encoder sees a fixed number of tokens; say what it drops
            warnings.warn(f"a prompt is {longest} tokens long, more than the text encoder's {self.max_length}: "
                          f"it is cut to its first {self.max_length} tokens")
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(device)
        hidden = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        return hidden.float(), tokens["attention_mask"].bool()
