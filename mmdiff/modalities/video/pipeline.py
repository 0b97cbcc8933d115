"""Sampling clips: class-conditional video generation and image-to-video (any given frames).

    pipe = mmdiff.pipeline("video")                          # the shipped moving-digits model
    out = pipe(class_labels=[3, 7], num_frames=16, guidance_scale=2.0)
    out.save("digits.mp4")                                   # .gif, .webm, .png (a strip per video)
    out = pipe(first_frame=Image.open("frame.png"))          # image-to-video
    out = text_pipe(prompt="a video of the digit 3")         # a model trained with --text_encoder

Labels, prompts, guidance and frame encoding are the shared latent pipeline's; the latent is
(T, c, h, w), frames go through the image autoencoder frame by frame.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ...core import checks
from ...media import save_image_grid, save_video, save_video_grid, to_pil
from ...pipelines import Given
from ...registry import register_pipeline
from ..latent_pipeline import LatentPipeline
from .pretrained import LAYOUT as LATTE_LAYOUT, latte_prompts

VIDEO_OUTPUTS = ("pil", "pt", "latent")


@dataclass
class VideoOutput:
    """Generated clips: ``videos`` (B, T, C, H, W) in [-1, 1]; ``frames`` the same as PIL images."""

    videos: torch.Tensor
    fps: int = 8

    @property
    def frames(self) -> list[list[Image.Image]]:
        return [to_pil(video) for video in self.videos]  # B lists of T images

    def save(self, path, fps: int | None = None, scale: int | None = None, nrow: int | None = None) -> Path:
        """``.mp4``/``.webm``/``.gif``: one video, several tiled ``nrow`` per row; ``.png``: a strip
        of frames per video, one row each. Enlarged to a viewable size unless ``scale`` says (1: raw)."""
        path = Path(path)
        fps = fps or self.fps
        if path.suffix.lower() == ".png":
            frames = self.videos.flatten(0, 1)  # (B*T, C, H, W)
            return save_image_grid(frames, path, nrow=self.videos.shape[1], scale=scale)
        if len(self.videos) == 1:
            return save_video(self.videos[0], path, fps=fps, scale=scale)
        return save_video_grid(self.videos, path, nrow=nrow, fps=fps, scale=scale)



@register_pipeline("video")
class VideoPipeline(LatentPipeline):
    """Class-conditional or text-to-video generation and image-to-video (any given frames)."""

    default_model = "video-moving-digits"
    # ``classify`` scores a frame as a still clip of this many frames: temporal attention pools
    # the copies' independent noises. Measured on the shipped model (200 held-out first frames, two
    # seeds): 1 frame 94.5-96% right, 2 frames 96-96.5%, 4 frames 97-97.5% at 4x the cost of 1.
    score_frames: int = 4

    @property
    def latte(self) -> bool:
        """Loaded from a diffusers Latte folder: its latent layout and caption handling at the boundary."""
        return self.config.extra.get("layout") == LATTE_LAYOUT

    def from_layout(self, options):
        """``options.latents`` in our (B, T, c, h, w) layout: a Latte pipeline's come (B, c, T, h, w)."""
        if not self.latte or options.latents is None:
            return options
        if options.latents.ndim != 5:
            checks.fail("latents", "Latte's (B, C, T, h, w) noise", tuple(options.latents.shape))
        return dataclasses.replace(options, latents=options.latents.transpose(1, 2))

    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Latents (B, T, c, h, w) -> frames, ``chunk`` frames through the autoencoder at a time."""
        if chunk is None:
            return super().decode(latents)
        checks.integer("decode_chunk_size", chunk, low=1)
        default, self.autoencoder.decode_batch_size = self.autoencoder.decode_batch_size, chunk
        try:
            return super().decode(latents)
        finally:
            self.autoencoder.decode_batch_size = default

    @property
    def max_frames(self) -> int:
        return self.model.config.patch.size[0]

    def latent_shape(self, num_frames: int | None = None) -> tuple[int, ...]:
        pc = self.model.config.patch
        t, h, w = pc.size
        num_frames = t if num_frames is None else checks.integer("num_frames", num_frames)
        if not 1 <= num_frames <= t or num_frames % pc.temporal_patch:
            raise ValueError(f"num_frames must be between 1 and {t} (the trained length)"
                             + (f" and a multiple of {pc.temporal_patch}" if pc.temporal_patch > 1 else "")
                             + f", got {num_frames}")
        return (num_frames, pc.channels, h, w)

    def as_sample(self, latents):
        frames = min(self.score_frames, self.max_frames)
        return latents[:, None].expand(-1, frames, *latents.shape[1:]).contiguous()

    def _given(self, given_frames: dict, shape: tuple[int, ...], first_frame: bool = False) -> Given:
        """{frame index: image(s)} -> the known latents and their mask, shaped like the latent batch
        (``first_frame``: frame 0 came as that argument, so messages name it)."""
        known, mask = torch.zeros(shape, device=self.device), torch.zeros(shape, device=self.device)
        for index, image in given_frames.items():
            checks.integer("given_frames index", index)
            if not -shape[1] <= index < shape[1]:
                raise ValueError(f"given frame {index} is outside the {shape[1]} frames being generated")
            name = "first_frame" if first_frame and index == 0 else f"given_frames[{index}]"
            known[:, index] = self.picture_latents(image, shape[0], name=name)
            mask[:, index] = 1
        return Given(known, mask, mask_kwarg="given")

    def _given_batch(self, given_frames: dict) -> int | None:
        sizes = {self.batch_of(image) for image in given_frames.values()} - {None}
        if len(sizes) > 1:
            raise ValueError(f"given frames come in different batch sizes {sorted(sizes)}")
        return sizes.pop() if sizes else None

    def _frames_decide(self, given: Given, batch: int, infer_label: bool, options):
        """Conditions for given frames without labels: the class inferred from the frames by the
        model's own likelihood, or the null class, unguided (cond == uncond)."""
        # the network alone barely carries a moving digit's shape from a given frame to the others
        # (docs/video.md); its class-conditional path does, so the class is decided first
        if infer_label and self.model.config.num_classes:
            # from the latents just encoded: no frame goes through the autoencoder twice
            index = given.mask[0, :, 0, 0, 0].nonzero().flatten().tolist()
            labels = sum(self.classify(latents=given.known[:, i]) for i in index).argmax(-1)
        else:
            labels = torch.full((batch,), self.model.null_class, device=self.device)
            options = dataclasses.replace(options, guidance_scale=1.0)
        return {"class_labels": labels}, self._uncond(labels), options

    @torch.no_grad()
    def __call__(self, class_labels=None, *, prompt: str | list[str] | None = None, negative_prompt=None,
                 prompt_embeds=None, negative_prompt_embeds=None, prompt_attention_mask=None,
                 negative_prompt_attention_mask=None, num_videos: int | None = None, num_frames: int | None = None,
                 first_frame=None, given_frames: dict | None = None, infer_label: bool = True, output_type: str = "pil",
                 decode_chunk_size: int | None = None, options=None, **sampling):
        """``class_labels`` (ints or class names), ``prompt`` (a model trained with a text
        encoder; guided against the empty prompt), its embeddings ``prompt_embeds`` (B, M, D)
        (with ``negative_prompt_embeds``, ``prompt_attention_mask``... as in diffusers), or
        ``num_videos`` (unconditional); ``sampling``:
        the ``SamplingOptions`` fields and the sampler's own options. ``first_frame`` (a PIL image,
        a list of them, or a tensor (C, H, W) / (B, C, H, W) in [-1, 1]) or
        ``given_frames={index: image, ...}`` are kept as given and the rest is generated. Given
        frames without labels: a class-conditional model first infers each video's class from them
        (``classify``, the model's own likelihood) and generates for it, or with
        ``infer_label=False`` samples with the null label, unguided. ``num_frames`` may be any
        length up to the trained one. ``decode_chunk_size``: frames the autoencoder decodes at a
        time. Returns a ``VideoOutput`` (``.frames``, ``.videos``, ``.save``), the (B, T, C, H, W)
        tensor with ``output_type="pt"``, or the final latents with ``"latent"``. A pipeline loaded
        from a diffusers Latte folder takes ``latents=`` and returns latents in Latte's layout
        (B, C, T, h, w), so the same noise gives diffusers' video (``pretrained.py``)."""
        self.check_output_type(output_type, VIDEO_OUTPUTS)
        opts = self.from_layout(self.options(options, **sampling))
        if given_frames is not None and not isinstance(given_frames, dict):
            checks.fail("given_frames", "a dict {frame index: image}", type(given_frames).__name__, error=TypeError)
        given_frames = {**(given_frames or {}), **({0: first_frame} if first_frame is not None else {})}
        num_videos = num_videos or self._given_batch(given_frames)
        can_decide = (infer_label and bool(self.model.config.num_classes)) or self.model.null_class is not None
        embeds = dict(prompt_embeds=prompt_embeds, prompt_attention_mask=prompt_attention_mask,
                      negative_prompt_embeds=negative_prompt_embeds,
                      negative_prompt_attention_mask=negative_prompt_attention_mask)
        unlabelled = class_labels is None and prompt is None and prompt_embeds is None
        decide = unlabelled and bool(given_frames) and can_decide
        cond = uncond = None
        if decide:
            batch = num_videos or 1
        else:
            cond, uncond, batch = self.conditioning(class_labels, prompt, num_videos, "num_videos",
                                                    negative_prompt=negative_prompt, embeds=embeds)
        shape = (batch, *self.latent_shape(num_frames))
        given = self._given(given_frames, shape, first_frame is not None) if given_frames else None
        if decide:
            cond, uncond, opts = self._frames_decide(given, batch, infer_label, opts)
        elif self.latte:
            cond, uncond = latte_prompts(cond, uncond, from_text=prompt is not None or prompt_embeds is None)
        latents = self.solve(shape, opts, cond=cond, uncond=uncond, given=given)  # (B, T, c, h, w)
        if output_type == "latent":
            return latents.transpose(1, 2) if self.latte else latents
        videos = self.decode(latents, decode_chunk_size)  # (B, T, C, H, W)
        if output_type == "pt":
            return videos
        return VideoOutput(videos, fps=int(self.config.extra.get("fps", 8)))
