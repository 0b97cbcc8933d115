"""Published diffusers pipelines -> mmdiff pipelines: the folder layer every modality shares.

A ``model`` argument is one of: mmdiff's own export (``pipeline.json``), a diffusers pipeline
folder (``model_index.json``), a bare diffusers transformer folder, or a Hub repo id resolved
through the local cache first (``core.checkpoint.resolve_pretrained``: no network call when the
files are cached or HF_HUB_OFFLINE=1). Weights come from safetensors only.

A modality registers, per diffusers pipeline class (model_index.json's ``_class_name``), a
loader that builds its pipeline from the folder's parts::

    @register_loader("DiTPipeline", task="image")
    def load_dit(cls, folder, index) -> Pipeline: ...

The scheduler folder becomes our schedule and default sampler (``scheduler_settings``): the
same float32 alphas_cumprod as diffusers, its class's timestep grid, its prediction type, and
the sampler of ours that takes the same steps (DDIMScheduler -> ddim, DPMSolverMultistep ->
dpmpp_2m, EulerDiscrete -> euler, ...). Any other sampler of ours works on the loaded pipeline.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .components.autoencoders import AutoencoderKL
from .components.encoders import TextEncoder
from .core.checkpoint import CONFIG_NAME, PICKLE_SUFFIXES, CheckpointError, read_config_json
from .core.schedules import DiscreteSchedule, Schedule

MODEL_INDEX = "model_index.json"
SCHEDULER_FILE = "scheduler_config.json"


# ------------------------------------------------------------------------------ loaders by class

@dataclass(frozen=True)
class Loader:
    task: str
    load: Callable  # (pipeline class, folder, model_index dict) -> pipeline


LOADERS: dict[str, Loader] = {}
# Denoiser classes a bare diffusers model folder may hold, to the loader of that folder alone.
MODEL_LOADERS: dict[str, Loader] = {}


def register_loader(class_name: str, task: str):
    """Register ``fn(cls, folder, index)`` for diffusers pipelines of ``class_name``."""
    def add(fn):
        LOADERS[class_name] = Loader(task, fn)
        return fn
    return add


def register_model_loader(class_name: str, task: str):
    """Register ``fn(cls, folder, config)`` for a bare diffusers model folder of ``class_name``."""
    def add(fn):
        MODEL_LOADERS[class_name] = Loader(task, fn)
        return fn
    return add


def supported() -> str:
    return ", ".join(sorted(LOADERS)) + " pipelines; " + ", ".join(sorted(MODEL_LOADERS)) + " model folders"


def load_diffusers(cls, folder: Path, *, device=None, dtype=None):
    """A pipeline of class ``cls`` from a diffusers pipeline or model folder (already resolved)."""
    pipe = _load(cls, folder)
    return pipe.to(device=device, dtype=dtype or torch.float32)


def _load(cls, folder: Path):
    if (folder / MODEL_INDEX).is_file():
        index = read_json(folder / MODEL_INDEX)
        return _pick(LOADERS, index.get("_class_name"), cls, folder, "pipeline").load(cls, folder, index)
    if (folder / CONFIG_NAME).is_file() and "_class_name" in (config := read_config_json(folder)):
        if (folder.parent / MODEL_INDEX).is_file():  # a pipeline's transformer/: the whole pipeline
            return _load(cls, folder.parent)
        return _pick(MODEL_LOADERS, config["_class_name"], cls, folder, "model").load(cls, folder, config)
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{folder} holds pickle file(s) {pickles} and no pipeline.json; mmdiff never unpickles "
                              f"implicitly. An original DiT/SiT checkpoint converts explicitly: "
                              f"python -m mmdiff.convert {folder / pickles[0]} OUT_FOLDER (--kind sit for SiT)")
    raise CheckpointError(f"{folder / 'pipeline.json'} is missing: {folder} is neither a pipeline folder written by "
                          f"save_pretrained nor a diffusers one ({MODEL_INDEX}, or a model's {CONFIG_NAME} with "
                          f"_class_name); it holds {sorted(p.name for p in folder.iterdir())}")


def _pick(table: dict, name, cls, folder: Path, what: str) -> Loader:
    if name not in table:
        raise CheckpointError(f"{folder} holds a diffusers {name or 'folder without _class_name'}, which mmdiff does "
                              f"not load; supported: {supported()}. Other architectures (UNets such as "
                              f"StableDiffusionPipeline's) have no mmdiff denoiser")
    loader = table[name]
    if cls.task and loader.task != cls.task:
        raise CheckpointError(f"{folder} holds a diffusers {name}, a '{loader.task}' {what}, not '{cls.task}'; "
                              f"use mmdiff.pipeline('{loader.task}', model=...)")
    return loader


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def part(folder: Path, index: dict, name: str, required: bool = True) -> Path | None:
    """The subfolder of component ``name`` in a pipeline folder, checked against model_index.json."""
    entry = index.get(name)
    if entry is None or entry == [None, None] or not (folder / name).is_dir():
        if required:
            raise CheckpointError(f"{folder}: the diffusers pipeline has no '{name}' component ({MODEL_INDEX} lists "
                                  f"{sorted(k for k in index if not k.startswith('_'))})")
        return None
    return folder / name


def latent_components(folder: Path, index: dict, model, caption_tokens: int | None = None) -> dict:
    """A diffusers latent pipeline's parts around its network: the AutoencoderKL and, for a
    captioned model whose folder has them, the T5 encoder and tokenizer (without them,
    ``prompt_embeds=`` is the way in)."""
    components = {"model": model, "autoencoder": AutoencoderKL.from_pretrained(part(folder, index, "vae"))}
    encoder, tokenizer = part(folder, index, "text_encoder", False), part(folder, index, "tokenizer", False)
    if caption_tokens and encoder is not None and tokenizer is not None:
        # diffusers' pipelines lower-case and strip captions (their clean_caption needs bs4 and ftfy)
        components["text_encoder"] = TextEncoder.from_parts(encoder, tokenizer, lowercase=True,
                                                            max_length=caption_tokens)
    return components


# ------------------------------------------------------------------------------------ schedulers

@dataclass(frozen=True)
class SchedulerClass:
    sampler: str  # ours that takes the same steps
    grid_rule: str  # DiscreteSchedule.grid_rule: where the class puts its timesteps
    spacing: str  # the class's default timestep_spacing
    init_sigma: bool = False  # Euler-type: init_noise_sigma is sigma_max for linspace/trailing


SCHEDULERS = {
    "DDIMScheduler": SchedulerClass("ddim", "ddim", "leading"),
    # DDPM's posterior step with the fixed small variance is DDIM with eta = 1 (other noise draws)
    "DDPMScheduler": SchedulerClass("euler_ancestral", "ddim", "leading"),
    "DPMSolverMultistepScheduler": SchedulerClass("dpmpp_2m", "dpmsolver", "linspace"),
    "UniPCMultistepScheduler": SchedulerClass("unipc", "dpmsolver", "linspace"),
    "EulerDiscreteScheduler": SchedulerClass("euler", "euler", "linspace", init_sigma=True),
    "EulerAncestralDiscreteScheduler": SchedulerClass("euler_ancestral", "euler", "linspace", init_sigma=True),
    "HeunDiscreteScheduler": SchedulerClass("heun", "euler", "linspace", init_sigma=True),
}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
# Settings that change the arithmetic in ways no mmdiff sampler reproduces: refused, not ignored.
UNSUPPORTED = {"thresholding": False, "clip_sample": False, "trained_betas": None, "use_exponential_sigmas": False,
               "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False, "timestep_type": "discrete"}
CLASS_DEFAULTS = {"DDIMScheduler": {"clip_sample": True}, "DDPMScheduler": {"clip_sample": True}}


@dataclass(frozen=True)
class SchedulerSettings:
    """What a diffusers scheduler config means in mmdiff: the schedule, the model's target, the
    default sampler and spacing, and where the initial noise starts (``init_noise``)."""

    schedule: Schedule
    prediction: str
    sampler: str
    spacing: str
    init_noise: str | None = None  # "sigma": start at sigma_max, not sqrt(sigma_max^2 + 1)


def scheduler_settings(config: dict, source: str = SCHEDULER_FILE) -> SchedulerSettings:
    """``SchedulerSettings`` of a diffusers ``scheduler_config.json`` dict."""
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise CheckpointError(f"{source}: scheduler {name!r} is not one mmdiff maps; supported: {sorted(SCHEDULERS)}. "
                              f"Pick a sampler of ours instead: pipe(..., sampler='dpmpp_2m')")
    kind = SCHEDULERS[name]
    c = {**UNSUPPORTED, **CLASS_DEFAULTS.get(name, {}), **config}
    wrong = {k: c[k] for k, v in UNSUPPORTED.items() if c[k] != v}
    if wrong:
        raise CheckpointError(f"{source}: {name} option(s) {wrong} are not supported (mmdiff's samplers implement "
                              f"{ {k: UNSUPPORTED[k] for k in wrong} }); edit the config or pass sigmas= of your own")
    beta, prediction = c.get("beta_schedule", "linear"), c.get("prediction_type", "epsilon")
    if beta not in BETAS or prediction not in PREDICTIONS:
        raise CheckpointError(f"{source}: beta_schedule {beta!r} / prediction_type {prediction!r}: mmdiff maps "
                              f"beta schedules {sorted(BETAS)} and predictions {sorted(PREDICTIONS)}")
    spacing = "karras" if c.get("use_karras_sigmas") else c.get("timestep_spacing", kind.spacing)
    final = "first" if c.get("final_sigmas_type") == "sigma_min" or c.get("set_alpha_to_one") is False else "zero"
    schedule = DiscreteSchedule(name=BETAS[beta], num_timesteps=c.get("num_train_timesteps", 1000),
                                beta_start=c.get("beta_start", 0.0001), beta_end=c.get("beta_end", 0.02),
                                zero_terminal_snr=bool(c.get("rescale_betas_zero_snr", False)),
                                steps_offset=c.get("steps_offset", 0), default_spacing=spacing,
                                float32_cumprod=True, grid_rule=kind.grid_rule, final_level=final)
    sampler = kind.sampler
    if name == "DPMSolverMultistepScheduler":
        sampler = _dpm_sampler(c, source)
    init = "sigma" if kind.init_sigma and spacing in ("linspace", "trailing") else None
    return SchedulerSettings(schedule, PREDICTIONS[prediction], sampler, spacing, init)


def _dpm_sampler(c: dict, source: str) -> str:
    """DPM-Solver's algorithm and order as ours: ++(2M) by default; its final step into 0 is
    first order, as ours always is (lower_order_final / final_sigmas_type="zero")."""
    algorithm, order = c.get("algorithm_type", "dpmsolver++"), c.get("solver_order", 2)
    if algorithm not in ("dpmsolver++", "sde-dpmsolver++") or order not in (1, 2, 3):
        raise CheckpointError(f"{source}: DPMSolverMultistepScheduler algorithm_type {algorithm!r} order {order}: "
                              f"mmdiff runs DPM-Solver++ (data prediction) of order 1, 2 or 3")
    if c.get("solver_type", "midpoint") != "midpoint":
        raise CheckpointError(f"{source}: DPMSolverMultistepScheduler solver_type {c['solver_type']!r}: mmdiff's "
                              f"DPM-Solver++(2M) is the midpoint form (diffusers' default)")
    if algorithm == "sde-dpmsolver++":
        return "dpmpp_2m_sde" if order == 2 else "dpmpp_3m_sde"
    return {1: "ddim", 2: "dpmpp_2m", 3: "dpmpp_3m"}[order]


def read_scheduler(folder: Path, index: dict) -> SchedulerSettings:
    where = part(folder, index, "scheduler")
    path = where / SCHEDULER_FILE
    if not path.is_file():
        raise CheckpointError(f"{where} has no {SCHEDULER_FILE}")
    return scheduler_settings(read_json(path), str(path))


def trained_ddpm() -> SchedulerSettings:
    """For a bare transformer folder, which has no scheduler: the DDPM schedule DiT, PixArt and
    Latte were trained with (linear betas 1e-4..0.02 over 1000 steps, float32 alpha_bar), sampled
    with dpmpp_2m as their pipelines' DPM-Solver++ default."""
    schedule = DiscreteSchedule(name="linear", float32_cumprod=True, grid_rule="dpmsolver", default_spacing="linspace")
    return SchedulerSettings(schedule, "eps", "dpmpp_2m", "linspace")
