"""The page: a tab per modality, each a model, its inputs, the sampling controls and a Generate
button whose request waits in one bounded queue.

Every tab's controls start at its shipped model's defaults (``pipeline.json``). All three buttons
share one concurrency group, so the machine samples ``concurrency`` requests at a time whatever
the tab, and at most ``max_queue`` wait; the next one is told the queue is full.
"""
from __future__ import annotations

import tempfile

import gradio as gr

from ..core.checkpoint import DTYPES
from ..core.samplers import SAMPLERS
from ..cli.inputs import load_pipeline
from .handlers import MAX_NEW_TOKENS, MAX_STEPS, Handlers

# System fonts: gradio's default theme would fetch Google fonts, and the page talks to no one but
# this server.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
GROUP = "sampling"  # the one concurrency group of every Generate button


def build(max_batch: int = 16, device: str | None = None) -> gr.Blocks:
    """The page (not yet queued or launched); the shipped pipelines are loaded now and stay warm."""
    handlers = Handlers(tempfile.mkdtemp(prefix="mmdiff-ui-"), max_batch=max_batch, device=device)
    with gr.Blocks(title="mmdiff", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown("# mmdiff\nSample the shipped models or a pipeline folder of your own.")
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                _image_tab(handlers)
            with gr.Tab("Video", id="video"):
                _video_tab(handlers)
            with gr.Tab("Text", id="text"):
                _text_tab(handlers)
    return page


def _model(task: str, device: str | None):
    """The model folder and dtype controls, and the shipped pipeline whose defaults the tab shows."""
    with gr.Accordion("Model", open=False):
        folder = gr.Textbox(label="Pipeline folder", placeholder="blank: the shipped model",
                            elem_id=f"{task}-model")
        dtype = gr.Dropdown(list(DTYPES), value="float32", label="Weights dtype")
    return load_pipeline(task, device=device), folder, dtype


def _sampling(task: str, pipe, guidance: bool = True) -> list:
    config = pipe.config
    with gr.Row():
        sampler = gr.Dropdown(sorted(SAMPLERS), value=config.sampler, label="Sampler")
        steps = gr.Slider(1, MAX_STEPS, value=config.steps, step=1, label="Steps", elem_id=f"{task}-steps")
    with gr.Row():
        controls = [sampler, steps]
        if guidance:
            controls.append(gr.Slider(0, 10, value=config.guidance_scale, step=0.5, label="Guidance scale",
                                      elem_id=f"{task}-guidance"))
        controls.append(gr.Number(value=0, precision=0, label="Seed (blank: random)", elem_id=f"{task}-seed"))
    return controls


def _button(task: str):
    return gr.Button("Generate", variant="primary", elem_id=f"{task}-generate")


def _image_tab(handlers: Handlers) -> None:
    with gr.Row():
        with gr.Column():
            pipe, folder, dtype = _model("image", handlers.device)
            labels = gr.Textbox(value="3 7", label="Class labels", info=f"numbers or names: {_classes(pipe)}",
                                elem_id="image-labels")
            sampling = _sampling("image", pipe)
            with gr.Accordion("Start from a picture (img2img, inpainting)", open=False):
                picture = gr.Image(type="pil", label="Picture", sources=["upload", "clipboard"])
                strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength (how much is redrawn)")
                mask = gr.Image(type="pil", label="Mask: white is repainted (optional)", sources=["upload"])
            button = _button("image")
        gallery = gr.Gallery(label="Images", format="png", columns=4, object_fit="contain", elem_id="image-out")
    button.click(handlers.image, [folder, dtype, labels, *sampling, picture, strength, mask], gallery,
                 api_name="image", concurrency_id=GROUP)


def _video_tab(handlers: Handlers) -> None:
    with gr.Row():
        with gr.Column():
            pipe, folder, dtype = _model("video", handlers.device)
            labels = gr.Textbox(value="4", label="Class labels", elem_id="video-labels",
                                info=f"one clip each: {_classes(pipe)}; blank with a first frame: read off it")
            frames = gr.Slider(1, pipe.max_frames, value=pipe.max_frames, step=1, label="Frames")
            sampling = _sampling("video", pipe)
            first = gr.Image(type="pil", label="First frame (image-to-video, optional)", sources=["upload"])
            button = _button("video")
        video = gr.Video(label="Video", format="mp4", autoplay=True, loop=True, elem_id="video-out")
    button.click(handlers.video, [folder, dtype, labels, frames, *sampling, first], video,
                 api_name="video", concurrency_id=GROUP)


def _text_tab(handlers: Handlers) -> None:
    with gr.Row():
        with gr.Column():
            pipe, folder, dtype = _model("text", handlers.device)
            prompt = gr.Textbox(value="The function returns", label="Prompt (blank: a sample of its own)",
                                lines=2, elem_id="text-prompt")
            new = gr.Slider(1, MAX_NEW_TOKENS, value=64, step=1, label="New tokens", elem_id="text-new")
            temperature = gr.Slider(0, 1.5, value=1.0, step=0.05, label="Temperature")
            sampling = _sampling("text", pipe, guidance=False)
            button = _button("text")
        text = gr.Textbox(label="Text", lines=12, elem_id="text-out")
    button.click(handlers.text, [folder, dtype, prompt, new, temperature, *sampling], text,
                 api_name="text", concurrency_id=GROUP)


def _classes(pipe) -> str:
    names = pipe.class_names
    return ", ".join(names) if names else f"0..{pipe.model.config.num_classes - 1}"
