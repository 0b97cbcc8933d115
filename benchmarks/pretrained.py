"""Loading and sampling a published DiT pipeline: mmdiff vs diffusers, side by side.

A full-size DiTPipeline (DiT-XL/2 at 256 px: the legacy Transformer2DModel layout of
facebook/DiT-XL-2-256, SD's AutoencoderKL, DDIMScheduler) or PixArtAlphaPipeline (PixArt-XL/2
at 512 px, DPM-Solver++, caption embeddings given: no T5) with random weights is written once with
diffusers' ``save_pretrained``; then each (library, dtype) loads the folder and samples one
class label (or caption) with classifier-free guidance for 1 and for ``--steps`` steps, decoded,
on the same latents. Sampling is CPU time of the one torch thread (other jobs on the shared
machine do not inflate it), both pipelines in one process alternating; memory and load time in
fresh processes.

    python benchmarks/pretrained.py --write_docs              # DiT-XL/2
    python benchmarks/pretrained.py --model pixart --write_docs
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmdiff.eval.tables import machine, table, update_section

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# facebook/DiT-XL-2-256's transformer/config.json and PixArt-alpha/PixArt-XL-2-512x512's
DIT_XL_2 = dict(sample_size=32, num_layers=28, attention_head_dim=72, in_channels=4, out_channels=8, patch_size=2,
                attention_bias=True, num_attention_heads=16, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                norm_type="ada_norm_zero", norm_elementwise_affine=False)
PIXART_XL_2_512 = dict(sample_size=64, num_layers=28, attention_head_dim=72, in_channels=4, out_channels=8, patch_size=2,
                       attention_bias=True, num_attention_heads=16, activation_fn="gelu-approximate",
                       num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
                       norm_eps=1e-6, caption_channels=4096, cross_attention_dim=1152, interpolation_scale=1)
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=256,
              scaling_factor=0.18215)
CAPTION_TOKENS = 120


def write_folder(kind: str, folder: Path) -> None:
    from diffusers import (AutoencoderKL, DDIMScheduler, DiTPipeline, DPMSolverMultistepScheduler,
                           PixArtAlphaPipeline, Transformer2DModel)

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD_VAE)
    if kind == "dit":
        model = Transformer2DModel(**DIT_XL_2)
        first = model.transformer_blocks[0].norm1.emb.state_dict()  # the hub checkpoint's tied embedders
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first)
        pipe = DiTPipeline(transformer=model, vae=vae, scheduler=DDIMScheduler(clip_sample=False))
    else:
        model = Transformer2DModel(**PIXART_XL_2_512)
        pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, transformer=model, vae=vae,
                                   scheduler=DPMSolverMultistepScheduler())
    pipe.save_pretrained(folder)


def inputs(kind: str, latent: int):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, latent, latent, generator=g)
    if kind == "dit":
        return latents, {}
    mask = torch.zeros(1, CAPTION_TOKENS, dtype=torch.long)
    mask[:, :20] = 1
    negative = torch.zeros_like(mask)
    negative[:, :1] = 1
    return latents, dict(prompt_embeds=torch.randn(1, CAPTION_TOKENS, 4096, generator=g), prompt_attention_mask=mask,
                         negative_prompt_embeds=torch.randn(1, CAPTION_TOKENS, 4096, generator=g),
                         negative_prompt_attention_mask=negative)


def load(kind: str, library: str, dtype, folder: Path):
    if library == "mmdiff":
        import mmdiff
        return mmdiff.pipeline("image", model=folder, dtype=dtype)
    from diffusers import DiTPipeline, PixArtAlphaPipeline
    pipe = (DiTPipeline if kind == "dit" else PixArtAlphaPipeline).from_pretrained(folder, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampler(kind: str, library: str, pipe, dtype):
    """``sample(n) -> CPU seconds`` of one guided n-step sample, decoded, on fixed latents."""
    latent = DIT_XL_2["sample_size"] if kind == "dit" else PIXART_XL_2_512["sample_size"]
    latents, embeds = inputs(kind, latent)
    guidance = 4.0 if kind == "dit" else 4.5

    def sample(n: int) -> float:
        t = time.thread_time()
        with torch.no_grad():
            if library == "mmdiff":
                pipe(class_labels=[207] if kind == "dit" else None, **embeds, num_inference_steps=n, latents=latents,
                     guidance_scale=guidance, output_type="pt", progress=False)
            elif kind == "dit":  # DiTPipeline draws its own latents: the same generator gives the same ones
                pipe([207], num_inference_steps=n, guidance_scale=guidance, generator=torch.manual_seed(1),
                     output_type="pt")
            else:
                pipe(**embeds, negative_prompt=None, num_inference_steps=n, latents=latents.to(dtype),
                     guidance_scale=guidance, use_resolution_binning=False, output_type="pt")
        return time.thread_time() - t
    return sample


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def memory(kind: str, library: str, dtype_name: str, folder: Path) -> dict:
    """In a fresh process: load (wall s), peak RSS over the load, and over it and a 2-step sample."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    pipe = load(kind, library, DTYPES[dtype_name], folder)
    seconds = time.perf_counter() - start
    after = peak_rss_mb()
    sampler(kind, library, pipe, DTYPES[dtype_name])(2)
    return {"load_s": seconds, "load_rss_mb": after, "peak_rss_mb": peak_rss_mb()}


# diffusers' PixArt pipeline fails with 1 step (it takes a second output DPM-Solver's step does not
# return), so its short run is 2 steps
SHORT = {"dit": 1, "pixart": 2}


def timings(kind: str, dtype_name: str, folder: Path, steps: int, rounds: int) -> dict:
    """Both pipelines in this process, alternating: median CPU s of one step and of the sample."""
    short = SHORT[kind]
    torch.set_num_threads(1)
    samplers = {lib: sampler(kind, lib, load(kind, lib, DTYPES[dtype_name], folder), DTYPES[dtype_name])
                for lib in ("diffusers", "mmdiff")}
    for sample in samplers.values():
        sample(short)  # warm-up
    times = {lib: {"one": [], "full": []} for lib in samplers}
    for r in range(rounds):
        for lib in (("diffusers", "mmdiff") if r % 2 == 0 else ("mmdiff", "diffusers")):
            times[lib]["one"].append(samplers[lib](short))
            times[lib]["full"].append(samplers[lib](steps))
    out = {}
    for lib, t in times.items():
        one, full = statistics.median(t["one"]), statistics.median(t["full"])
        step = (full - one) / (steps - short)
        out[lib] = {"step_s": step, "sample_s": full, "decode_s": one - short * step}
    return out


def run(kind: str, library: str, dtype: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", library, dtype, "--model", kind, "--folder", str(folder)],
                         check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(kind: str, results: dict, steps: int, rounds: int) -> str:
    rows = []
    for dtype in DTYPES:
        theirs, ours = results[("diffusers", dtype)], results[("mmdiff", dtype)]
        for lib, r in (("diffusers", theirs), ("mmdiff", ours)):
            rows.append([lib, dtype, f"{r['load_s']:.1f}", f"{r['load_rss_mb']:.0f}", f"{r['peak_rss_mb']:.0f}",
                         f"{r['step_s']:.2f}", f"{r['decode_s']:.2f}", f"{r['sample_s']:.1f}"])
        rows.append(["**mmdiff / diffusers**", dtype, f"{ours['load_s'] / theirs['load_s']:.2f}x time",
                     f"{ours['load_rss_mb'] / theirs['load_rss_mb']:.2f}x", f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x",
                     f"**{theirs['step_s'] / ours['step_s']:.2f}x** throughput", f"{ours['decode_s'] / theirs['decode_s']:.2f}x time",
                     f"{theirs['sample_s'] / ours['sample_s']:.2f}x throughput"])
    name = {"dit": "DiT-XL/2 256 px (DDIM, class label 207, guidance 4)",
            "pixart": "PixArt-XL/2 512 px (DPM-Solver++, 120-token caption embeddings, guidance 4.5)"}[kind]
    header = ["library", "weights", "load s", "peak RSS of the load MB", "peak RSS MB", "CPU s/step",
              "decode + call CPU s", f"{steps}-step sample CPU s"]
    return (f"### {name}\n\nCommand: `python benchmarks/pretrained.py --model {kind} --steps {steps} --rounds {rounds} "
            f"--write_docs`. "
            f"Random weights at full size, written by diffusers' `save_pretrained` (the hub repos' layout). Load and "
            f"memory: each library and dtype in a fresh process (load: wall seconds, the files in the page cache; peak "
            f"RSS over the load and a 2-step sample). Speed: both pipelines in one process, alternating, median of "
            f"{rounds} round(s) of CPU seconds of the one torch thread, guided and decoded, same latents; one step = "
            f"({steps}-step sample - {SHORT[kind]}-step sample) / {steps - SHORT[kind]}; the rest of a "
            f"{SHORT[kind]}-step call, less its steps, is the decode. "
            f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end.\n\n" + table(header, rows))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=("dit", "pixart"), default="dit")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--write_docs", action="store_true")
    p.add_argument("--folder", type=Path, default=None, help="reuse a folder written by an earlier run")
    p.add_argument("--one", nargs=2, metavar=("LIBRARY", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(memory(args.model, *args.one, args.folder)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / args.model
        if not (folder / "model_index.json").is_file():
            write_folder(args.model, folder)
        results = {(library, dtype): run(args.model, library, dtype, folder)
                   for dtype in DTYPES for library in ("diffusers", "mmdiff")}
        for dtype in DTYPES:
            for library, numbers in timings(args.model, dtype, folder, args.steps, args.rounds).items():
                results[(library, dtype)].update(numbers)
            print(dtype, {k: v for k, v in results.items() if k[1] == dtype}, flush=True)
        text = report(args.model, results, args.steps, args.rounds)
    print(text)
    if args.write_docs:
        update_section(f"pretrained-{args.model}", "## Pretrained models\n\n" + text if args.model == "dit" else text)


if __name__ == "__main__":
    main()
