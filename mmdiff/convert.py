"""Convert an original DiT or SiT checkpoint into an mmdiff pipeline folder (safetensors).

    python -m mmdiff.convert DiT-XL-2-256x256.pt out/dit-xl-2-256 --vae stabilityai/sd-vae-ft-ema
    python -m mmdiff.convert SiT-XL-2-256x256.pt out/sit-xl-2-256 --kind sit

The one explicit step that reads a pickle (``torch.load(weights_only=True)``, tensors only; a
training checkpoint's "ema" weights, as the repos' sample.py). The folder it writes loads with
``mmdiff.pipeline("image", model="out/dit-xl-2-256")``:

- DiT (facebookresearch/DiT): eps on the DDPM schedule it was trained with (linear betas
  1e-4..0.02, 1000 steps, float64 as its gaussian_diffusion.py), learned-sigma channels dropped;
- SiT (willisma/SiT): velocity on the linear interpolant, mapped onto mmdiff's flow target and
  ``FlowSchedule`` (see ``components.converters``).

Both guide with the null class (DiT's sample.py: scale 4.0). ``main(argv) -> exit code``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from .components.autoencoders import IdentityAutoencoder, load_autoencoder
from .components.converters import ORIGINAL_KINDS, build_dit, convert_original_checkpoint
from .core.checkpoint import DTYPES, CheckpointError
from .core.schedules import DiscreteSchedule, FlowSchedule
from .modalities.image import ImagePipeline
from .registry import PipelineConfig

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"  # DiT's and SiT's sample.py default (--vae ema)
GUIDANCE = 4.0  # their sample.py --cfg-scale
# How each kind samples by default: its schedule, target and a sampler of ours for it
KINDS = {
    "dit": dict(schedule=lambda: DiscreteSchedule(name="linear", default_spacing="trailing"), prediction="eps",
                sampler="dpmpp_2m", steps=25, spacing="trailing"),
    "sit": dict(schedule=lambda: FlowSchedule(), prediction="flow", sampler="heun", steps=25, spacing="linspace"),
}


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``python -m mmdiff.convert`` and ``mmdiff convert`` (one set for both)."""
    p.add_argument("checkpoint", type=Path, help="the original .pt file (facebookresearch/DiT or willisma/SiT)")
    p.add_argument("out", type=Path, help="the pipeline folder to write")
    p.add_argument("--kind", choices=ORIGINAL_KINDS, default="dit", help="what the checkpoint is (default: dit)")
    p.add_argument("--vae", default=DEFAULT_VAE,
                   help=f"the autoencoder: a folder, a Hub repo id or 'none' for latent space (default {DEFAULT_VAE})")
    p.add_argument("--num_heads", type=int, default=None, help="attention heads, for a size not in the DiT paper")
    p.add_argument("--num_classes", type=int, default=None, help="classes (default: the label table's rows - 1)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weights' dtype on disk")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> str:
    """Convert as ``args`` say; returns the line to print."""
    out = convert(args.checkpoint, args.out, kind=args.kind, vae=args.vae, num_heads=args.num_heads,
                  num_classes=args.num_classes, dtype=args.dtype)
    return f"wrote {out}: load it with mmdiff.pipeline('image', model='{out}')"


def convert(checkpoint: Path, out: Path, *, kind: str = "dit", vae: str = DEFAULT_VAE, num_heads: int | None = None,
            num_classes: int | None = None, dtype: str = "float32") -> Path:
    """Write the pipeline folder ``out`` for ``checkpoint``; returns ``out``."""
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    model = build_dit(*convert_original_checkpoint(checkpoint, kind, num_heads=num_heads, num_classes=num_classes))
    channels = model.config.patch.channels
    autoencoder = IdentityAutoencoder(channels) if vae == "none" else load_autoencoder(vae)
    if autoencoder.latent_channels != channels:
        raise CheckpointError(f"--vae {vae} makes {autoencoder.latent_channels}-channel latents, the model takes "
                              f"{channels}: pass the autoencoder it was trained with")
    spec = KINDS[kind]
    schedule = spec["schedule"]()
    config = PipelineConfig(prediction=spec["prediction"], sigma_data=1.0, sampler=spec["sampler"], steps=spec["steps"],
                            spacing=spec["spacing"], guidance_scale=GUIDANCE if model.null_class is not None else 1.0,
                            extra={"resolution": model.config.patch.size[-1] * autoencoder.downsample_factor,
                                   "converted_from": f"{kind.upper()} {checkpoint.name}"})
    pipe = ImagePipeline({"model": model, "autoencoder": autoencoder}, schedule, config)
    return pipe.save_pretrained(out, dtype=DTYPES[dtype])


def main(argv: list[str] | None = None) -> int:
    """``python -m mmdiff.convert``: the same arguments and messages as ``mmdiff convert``."""
    parser = argparse.ArgumentParser(prog="mmdiff convert", description=__doc__.split("\n\n")[0])
    configure(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed its message
        return int(e.code or 0)
    try:
        print(args.run(args))
    except (CheckpointError, OSError, ValueError) as e:
        print(f"mmdiff convert: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line: torch's are long
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
