"""Score an exported moving-digits video pipeline with the reference digits classifier.

    python recipes/video_eval.py --model runs/video-moving-digits/export
    python recipes/video_eval.py --write_docs --notes "trained in 14 min, load 2.1"   # the shipped model
    python recipes/video_eval.py --settings dpmpp_2m:25,euler:10 --per_class 4          # quick look

Class-conditional samples: per-frame conditional accuracy (the digit in each frame is read as the
requested class) and identity consistency (every frame of a video is read as one class). Motion:
1-D Wasserstein distances between the frame-to-frame centroid speeds (and signed per-axis
velocities) of the samples and of held-out clips. Image-to-video: the first frame of a held-out
clip is given, without its label, and the generated frames are read as that clip's class.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

import mmdiff
from mmdiff.data.video import MovingDigitsDataset
from mmdiff.eval.digits import locate_digit, motion_distance, video_scores
from mmdiff.eval.tables import machine, table, update_section


@dataclass
class EvalArgs:
    model: str | None = field(default=None, metadata={"help": "exported pipeline folder (default: the shipped one)"})
    per_class: int = field(default=20, metadata={"help": "class-conditional videos per class"})
    i2v_clips: int = field(default=100, metadata={"help": "held-out clips for image-to-video"})
    num_frames: int | None = field(default=None, metadata={"help": "frames per video (default: the trained length)"})
    settings: str = field(default="euler_ancestral:50,euler_ancestral:25,dpmpp_2m_sde:50,dpmpp_2m:25", metadata={
        "help": "comma-separated sampler:steps pairs, each scored on the same videos' seeds"})
    guidance_scale: float | None = field(default=None, metadata={"help": "default: the export's"})
    seed: int = 0
    batch_size: int = 50
    write_docs: bool = False
    notes: str = field(default="", metadata={"help": "a line for the docs (training command, time, load)"})


def in_batches(fn, n: int, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(slice(i, min(i + batch_size, n))) for i in range(0, n, batch_size)])


def generators(seed: int, indices: range) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in indices]


def parse_settings(text: str) -> list[tuple[str, int]]:
    pairs = [item.split(":") for item in text.split(",") if item.strip()]
    if not pairs or any(len(p) != 2 or not p[1].isdigit() for p in pairs):
        raise ValueError(f"--settings must look like 'dpmpp_2m:25,euler:10', got {text!r}")
    return [(name.strip(), int(steps)) for name, steps in pairs]


def held_out(pipe, n: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n clips of the test split (digits never seen in training) in the pipeline's geometry."""
    size = int(pipe.config.extra.get("resolution", pipe.latent_shape()[-1]))
    data = MovingDigitsDataset("test", num_clips=n, num_frames=num_frames, size=size, digit_size=size // 2)
    return torch.stack([data[i]["video"] for i in range(n)]), torch.stack([data[i]["label"] for i in range(n)])


def evaluate_setting(pipe, args: EvalArgs, sampler: str, steps: int, frames: int, real, real_labels) -> dict:
    """Scores of one sampler and step count: class-conditional videos and image-to-video."""
    box = int(pipe.config.extra.get("resolution", 32)) // 2  # the digit's size in moving-digits
    kw = dict(num_frames=frames, num_inference_steps=steps, sampler=sampler, guidance_scale=args.guidance_scale,
              output_type="pt", progress=False)
    labels = torch.arange(pipe.model.config.num_classes).repeat_interleave(args.per_class)
    t0 = time.time()
    videos = in_batches(lambda s: pipe(class_labels=labels[s].tolist(),
                                       generator=generators(args.seed, range(s.start, s.stop)), **kw),
                        len(labels), args.batch_size)
    result = {"seconds_per_video": (time.time() - t0) / len(labels)}
    result.update({f"cond_{k}": v for k, v in video_scores(videos, labels, box=box).items()})
    ours, theirs = locate_digit(videos), locate_digit(real)
    result["motion_speed_w1"] = motion_distance(ours, theirs, "speed")
    result["motion_velocity_w1"] = motion_distance(ours, theirs, "velocity")
    first, clip_labels = real[: args.i2v_clips, 0], real_labels[: args.i2v_clips]
    kw.pop("guidance_scale")  # without a label image-to-video runs unguided; with one, the export's
    result["i2v_inferred_label_accuracy"] = float((pipe.classify(first).argmax(-1) == clip_labels).float().mean())
    # i2v: no label (the pipeline infers it); i2v_null: no label and no inference; i2v_labelled: the true label
    for name, use_label, infer in (("i2v", False, True), ("i2v_null", False, False), ("i2v_labelled", True, False)):
        t0 = time.time()
        made = in_batches(lambda s: pipe(first_frame=first[s], class_labels=clip_labels[s].tolist() if use_label
                                         else None, infer_label=infer,
                                         guidance_scale=args.guidance_scale if use_label or infer else None,
                                         generator=generators(args.seed + 1, range(s.start, s.stop)), **kw),
                          len(first), args.batch_size)
        result[f"{name}_seconds_per_video"] = (time.time() - t0) / len(first)
        scores = video_scores(made, clip_labels, box=box)
        result[f"{name}_accuracy"] = scores["accuracy"]
        result[f"{name}_identity_consistency"] = scores["identity_consistency"]
        result[f"{name}_first_frame_exact"] = float(torch.equal(made[:, 0], first.clamp(-1, 1)))
    return result


def evaluate(args: EvalArgs) -> dict:
    """{"sampler:steps": scores} for every setting, plus the held-out clips' own scores ("data")."""
    pipe = mmdiff.pipeline("video", model=args.model)
    frames = args.num_frames or pipe.max_frames
    box = int(pipe.config.extra.get("resolution", 32)) // 2
    n = pipe.model.config.num_classes * args.per_class
    real, real_labels = held_out(pipe, max(n, args.i2v_clips), frames)
    data = video_scores(real, real_labels, box=box)
    results = {"data": {**data, "frames": frames, "videos": n,
                        "guidance_scale": pipe.config.guidance_scale if args.guidance_scale is None
                        else args.guidance_scale}}
    for sampler, steps in parse_settings(args.settings):
        results[f"{sampler}:{steps}"] = evaluate_setting(pipe, args, sampler, steps, frames, real, real_labels)
    return results


def markdown(args: EvalArgs, results: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    data = results["data"]
    settings = [k for k in results if k != "data"]
    rows = [[k.replace(":", " "), pct(r["cond_accuracy"]), pct(r["cond_identity_consistency"]),
             f"{r['motion_speed_w1']:.3f}", f"{r['motion_velocity_w1']:.3f}", pct(r["i2v_accuracy"]),
             pct(r["i2v_identity_consistency"]), pct(r["i2v_inferred_label_accuracy"]), pct(r["i2v_null_accuracy"]),
             pct(r["i2v_labelled_accuracy"]),
             "yes" if r["i2v_first_frame_exact"] and r["i2v_labelled_first_frame_exact"] else "NO",
             f"{r['seconds_per_video']:.2f}"] for k, r in ((k, results[k]) for k in settings)]
    rows.append(["held-out data", pct(data["accuracy"]), pct(data["identity_consistency"]), "0", "0", "", "", "", "",
                 "", "", ""])
    model = args.model or "the shipped model (mmdiff/assets/video-moving-digits)"
    return "\n".join([
        "## Video: moving digits (quality)",
        "",
        f"Command: `python recipes/video_eval.py{' --model ' + args.model if args.model else ''} --write_docs`. "
        f"Model: {model}. Per setting: {data['videos']} class-conditional videos ({args.per_class} per class, "
        f"guidance {data['guidance_scale']}) and {args.i2v_clips} image-to-video clips, {data['frames']} frames "
        f"each. The reference digits classifier reads a box around each frame's digit (found by its centroid). "
        f"Held-out clips use the test-split digits. Machine: {machine()}.",
        "",
        "Columns: *accuracy* — frames read as the requested class; *identity* — videos whose frames all read "
        "as one class; *W1 speed / velocity* — 1-D Wasserstein distance (pixels per frame) between the "
        "frame-to-frame centroid speeds (per-axis signed velocities) of the samples and of held-out clips "
        f"(held-out mean speed {data['mean_speed']:.2f} px/frame); *i2v* — the first frame of a held-out clip is "
        "given without its label, and the frames read as that clip's class (the pipeline's default: it infers "
        "the class from the given frame with the model's own likelihood, `VideoPipeline.classify`, then "
        "generates for that class with guidance); *label inferred* — how often that inference is right; "
        "*i2v, no inference* — the same with `infer_label=False` (the null label, unguided: the network alone); "
        "*i2v + label* — the true label and guidance; *given exact* — the given frames come back bit for bit.",
        "",
        table(["sampler steps", "accuracy", "identity", "W1 speed", "W1 velocity", "i2v accuracy", "i2v identity",
               "label inferred", "i2v, no inference", "i2v + label accuracy", "given exact", "s/video"], rows),
        "",
        "Goals (issue 4): conditional accuracy ≥ 90%, identity consistency ≥ 90%, image-to-video ≥ 90%.",
        *(["", args.notes] if args.notes else []),
    ])


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(EvalArgs).parse_args_into_dataclasses(args=argv)
    results = evaluate(args)
    for setting, result in results.items():
        print(setting + ": " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in result.items()))
    if args.write_docs:
        update_section("video-quality", markdown(args, results))
    return results


if __name__ == "__main__":
    main()
