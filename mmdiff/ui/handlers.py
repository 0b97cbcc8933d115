"""What the page's Generate buttons run: one pipeline call each, with the page's values.

Pipelines come warm from ``cli.inputs.load_pipeline``; the sampler's ``callback`` feeds the page's
progress bar; input the person can fix comes back as a message in the page (``gr.Error``). Each
request is bounded (samples, steps, tokens) so one request cannot take the server's memory.
"""
from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

from ..cli.inputs import USER_ERRORS, class_labels, fit_picture, load_pipeline, mask_tensor, one_line
from ..media import enlarge, to_pil
from ..options import SamplingOptions

MAX_STEPS = 500
MAX_NEW_TOKENS = 512
KEEP_VIDEOS_S = 900  # videos written for the page are gone after this; gradio keeps its own copy


@contextmanager
def shown_in_page():
    """The library's own message, one line in the page, instead of a server error."""
    try:
        yield
    except USER_ERRORS as e:
        raise gr.Error(one_line(e), print_exception=False) from e


class Handlers:
    """The three tabs' generate functions; ``max_batch`` samples per request at most."""

    def __init__(self, scratch: Path, max_batch: int = 16, device: str | None = None):
        self.scratch, self.max_batch, self.device = Path(scratch), max_batch, device

    def image(self, model, dtype, labels, sampler, steps, guidance, seed, picture, strength, mask,
              progress=gr.Progress()):
        with shown_in_page():
            pipe = load_pipeline("image", model, dtype, self.device)
            edit = {} if picture is None else {"image": fit_picture(picture, pipe), "strength": float(strength),
                                               "mask": None if mask is None else mask_tensor(mask)}
            images = pipe(class_labels=self._labels(labels), output_type="pt",
                          options=self._options(sampler, steps, guidance, seed, progress), **edit)
            return [enlarge(image) for image in to_pil(images)]

    def video(self, model, dtype, labels, num_frames, sampler, steps, guidance, seed, first_frame,
              progress=gr.Progress()):
        with shown_in_page():
            pipe = load_pipeline("video", model, dtype, self.device)
            from_frame = first_frame is not None and not (labels or "").strip()  # the class read off the frame
            out = pipe(class_labels=None if from_frame else self._labels(labels),
                       num_frames=int(num_frames), first_frame=fit_picture(first_frame, pipe),
                       options=self._options(sampler, steps, guidance, seed, progress))
            return str(out.save(self._video_path()))

    def text(self, model, dtype, prompt, max_new_tokens, temperature, sampler, steps, seed, progress=gr.Progress()):
        with shown_in_page():
            if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
                raise ValueError(f"new tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}")
            pipe = load_pipeline("text", model, dtype, self.device)
            options = self._options(sampler, steps, 1.0, seed, progress)
            if not prompt.strip():
                return pipe(num_samples=1, temperature=float(temperature), options=options)[0]
            return pipe(prompt, max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                        return_full_text=True, options=options)

    # ------------------------------------------------------------------------------ values
    def _labels(self, text) -> list[int | str]:
        labels = class_labels(text)
        if labels is None:
            raise ValueError("type one class label or more, e.g. 3 7")
        if len(labels) > self.max_batch:
            raise ValueError(f"{len(labels)} samples asked, this server makes at most {self.max_batch} per request")
        return labels

    @staticmethod
    def _options(sampler, steps, guidance, seed, progress) -> SamplingOptions:
        steps = int(steps)
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")

        def report(state):
            progress((state["i"] + 1, steps), desc="sampling", unit="steps")

        return SamplingOptions(sampler=sampler, num_inference_steps=steps, guidance_scale=float(guidance),
                               generator=None if seed is None else int(seed), progress=False, callback=report)

    def _video_path(self) -> Path:
        """A new file in the scratch folder; files older than ``KEEP_VIDEOS_S`` are removed."""
        old = time.time() - KEEP_VIDEOS_S
        for path in self.scratch.glob("*.mp4"):
            if path.stat().st_mtime < old:
                path.unlink(missing_ok=True)
        return self.scratch / f"{uuid.uuid4().hex}.mp4"
