"""Training on prompts instead of labels, for any latent modality: a frozen ``transformers`` text
encoder embeds captions (the data's ``caption``, or a class name through ``--prompt_template``),
the DiT attends to them by cross-attention, and the empty prompt stands in for dropped conditions
(classifier-free guidance). The encoder is exported with the pipeline (``text_encoder/``).

``PromptArgs`` holds the options, ``PromptTask`` the hooks; a modality's args and task list them
before their latent bases: ``class VideoTask(PromptTask, LatentDiffusionTask)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..components.encoders import TextEncoder
from ..core import checks


@dataclass
class PromptArgs:
    text_encoder: str | None = field(default=None, metadata={
        "help": "local folder (or cached Hub id) of a transformers text encoder: condition on prompts"})
    prompt_template: str = field(default="{label}", metadata={
        "help": "prompt made from a class name when the data has no captions, e.g. 'a video of the digit {label}'"})
    max_prompt_length: int = 77
    pooled_prompt: bool = field(default=True, metadata={
        "help": "also condition the adaLN modulation on the averaged prompt embedding (SD3's pooled text)"})

    def check_prompt_args(self) -> None:
        checks.integer("--max_prompt_length", self.max_prompt_length, low=1)
        if self.text_encoder and "{label}" not in self.prompt_template:
            checks.fail("--prompt_template", "a template with {label} in it", self.prompt_template,
                        "without it every class gets the same prompt")


class PromptTask:
    """Hooks of a ``LatentDiffusionTask`` trained on prompts when ``args.text_encoder`` is set;
    without it every hook is the base's (labels or nothing)."""

    text_encoder: TextEncoder | None = None
    # prompts kept encoded: the frozen encoder gives a prompt the same embedding every step, and
    # a template over class names repeats a few prompts (moving digits: a third of the step time)
    cache_size = 4096

    def setup(self):
        self.encoded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.args.text_encoder:
            self.text_encoder = TextEncoder.from_pretrained(self.args.text_encoder,
                                                            max_length=self.args.max_prompt_length)
        super().setup()

    def count_classes(self):
        return 0 if self.text_encoder is not None else super().count_classes()

    def extra_dit_options(self):
        extra = super().extra_dit_options()
        if self.text_encoder is None:
            return extra
        return {**extra, "context_dim": self.text_encoder.hidden_size, "pooled_context": self.args.pooled_prompt}

    def prompt_for(self, label: int) -> str:
        return self.args.prompt_template.format(label=self.class_names[int(label)])

    def prompts(self, batch: dict) -> list[str]:
        if "caption" in batch:
            return list(batch["caption"])
        return [self.prompt_for(i) for i in batch["label"]]

    def conditioning(self, batch):
        if self.text_encoder is None:
            return super().conditioning(batch)
        prompts = self.prompts(batch)
        drop = torch.rand(len(prompts)) < self.args.class_dropout  # "" is the unconditional prompt
        self.text_encoder.to(batch[self.data_key].device)
        context, mask = self.encode(["" if d else p for p, d in zip(prompts, drop.tolist())])
        return {"context": context, "context_mask": mask}

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(context (B, M, D), mask (B, M)) of the prompts, each new prompt through the encoder once."""
        new = [p for p in dict.fromkeys(prompts) if p not in self.encoded]
        if new:
            if len(self.encoded) + len(new) > self.cache_size:  # captions: mostly unique, start over
                self.encoded.clear()
            with torch.autocast("cpu", enabled=False):  # the encoder's own precision, cached once
                context, mask = self.text_encoder(new)
            self.encoded.update({p: (c, m) for p, c, m in zip(new, context, mask)})
        return (torch.stack([self.encoded[p][0] for p in prompts]), torch.stack([self.encoded[p][1] for p in prompts]))

    def pipeline_config(self):
        config = super().pipeline_config()
        if self.text_encoder is not None and self.args.class_dropout > 0:  # guidable against ""
            config = dataclasses.replace(config, guidance_scale=self.args.guidance_scale)
        return config

    def pipeline(self, model):
        pipe = super().pipeline(model)
        if self.text_encoder is not None:
            pipe.components["text_encoder"] = self.text_encoder
        return pipe

    def sample_classes(self) -> int:
        """How many classes validation samples show: the labels', or the prompts' class names."""
        return self.num_classes or (len(self.class_names) if self.text_encoder is not None else 0)

    def class_conditions(self, labels: list[int] | None) -> dict:
        """Pipeline arguments for samples of these classes: their prompts, or the labels."""
        if labels is None:
            return {}
        if self.text_encoder is not None:
            return {"prompt": [self.prompt_for(i) for i in labels]}
        return {"class_labels": labels}
