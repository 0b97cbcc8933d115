"""The video plugin: image-to-video training extras, frame attention, the pipeline (given frames,
shorter clips, guidance, saving), data from folders, the configs, and the shipped default model."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mmdiff
from mmdiff.core.dit import DiT, DiTConfig
from mmdiff.core.parametrization import Denoiser
from mmdiff.core.patch import PatchConfig
from mmdiff.core.schedules import get_schedule
from mmdiff.eval.digits import video_scores
from mmdiff.media import count_frames, read_video, save_video
from mmdiff.components.autoencoders import AutoencoderKL, AutoencoderKLConfig
from mmdiff.modalities.video import VideoArgs, VideoPipeline, VideoTask, given_frames_mask
from mmdiff.pipelines import ASSETS
from mmdiff.training import TrainConfig, Trainer, parse_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "recipes" / "configs"
TINY = dict(num_frames=8, resolution=16, num_clips=64, model="DiT-S/4", hidden_size=32, depth=2, num_heads=2,
            sample_steps=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step Trainer run of the video task: validation samples, export, reload."""
    out = tmp_path_factory.mktemp("video")
    cfg = TrainConfig(output_dir=str(out / "run"), max_steps=4, batch_size=8, validation_steps=4,
                      checkpointing_steps=4, report_to="none", progress=False)
    export = Trainer(VideoTask(VideoArgs(**TINY)), cfg).train()
    return out / "run", mmdiff.pipeline("video", model=export)


@pytest.fixture(scope="module")
def pipe(run):
    return run[1]


# ----------------------------------------------------------------------------- training extras

def test_given_frames_mask_mixes_first_frame_prefix_and_subsets():
    mask = given_frames_mask(4000, 8, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4000, 8) and mask.dtype == torch.bool
    assert mask.any(1).all() and not mask.all(1).any()  # something given, something left to generate
    only_first = (mask[:, 0] & (mask.sum(1) == 1)).double().mean().item()
    assert 0.5 <= only_first <= 0.65  # "first frame" half the time (+ prefixes/subsets that happen to be it)
    assert mask[:, 0].double().mean() > 0.75  # the first frame is given most often


def test_single_frame_clips_have_nothing_given():
    assert not given_frames_mask(100, 1, generator=torch.Generator().manual_seed(0)).any()


def test_training_extras_keep_given_frames_clean_and_out_of_the_loss():
    task = VideoTask(VideoArgs(**TINY, given_frames_prob=0.5))
    torch.manual_seed(0)
    x0 = torch.randn(2000, 8, 1, 4, 4)
    extra = task.training_extras(x0)
    given, noise, mask = extra["given"], extra["noise"], extra["mask"]
    assert given.shape == x0.shape and torch.equal(mask, 1 - given)
    assert torch.all(noise[given == 1] == 0) and torch.all(noise[given == 0] != 0)
    per_clip = given.flatten(2).amax(2)  # (B, T): whole frames are given
    assert torch.equal(given, per_clip[:, :, None, None, None].expand_as(given))
    share = per_clip.any(1).double().mean().item()
    assert abs(share - 0.5) < 0.05  # given_frames_prob of the clips
    none = VideoTask(VideoArgs(**TINY, given_frames_prob=0.0)).training_extras(x0)
    assert none["given"].sum() == 0 and torch.equal(none["mask"], torch.ones_like(x0))


def test_given_frames_reach_the_model_and_leave_the_loss():
    """The model is called with ``given=``, and the loss does not depend on its output at given
    frames."""
    task = VideoTask(VideoArgs(**TINY))
    task.setup()
    seen = {}

    class Probe(torch.nn.Module):  # output = input at given frames + something, target elsewhere ignored
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, class_labels=None, given=None):
            seen["given"] = given
            return x * self.w + 1000.0 * given  # huge error exactly where frames are given

    batch = {"video": torch.stack([task.dataset[i]["video"] for i in range(8)]),
             "label": torch.arange(8)}
    torch.manual_seed(3)
    with_given = task.loss(Probe(), batch)[0]
    assert seen["given"] is not None and seen["given"].shape == (8, 8, 1, 16, 16)
    assert seen["given"].sum() > 0 and with_given < 100  # the 1000s at given frames are not counted


def test_given_frames_enter_the_network_unscaled_at_every_noise_level():
    """c_in -> 0 at high noise; given (clean) frames must not vanish with it."""
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x, t, given=None):
            seen["x"] = x
            return torch.zeros_like(x)

    den = Denoiser(Probe(), get_schedule("flow"), "flow")
    x0 = torch.rand(1, 4, 1, 2, 2) + 1
    given = torch.zeros_like(x0)
    given[:, 0] = 1
    for sigma in (0.5, 100.0):
        x = x0 + sigma * (1 - given) * torch.randn_like(x0)
        den(x, torch.tensor([sigma]), given=given)
        assert torch.allclose(seen["x"][:, 0], x0[:, 0])  # as at sigma = 0 (flow: c_in = 1)
        assert torch.allclose(seen["x"][:, 1:], x[:, 1:] / (1 + sigma))  # the rest scaled by c_in
    edm = Denoiser(Probe(), get_schedule("edm", sigma_data=0.5), "edm", sigma_data=0.5)
    edm.loss(x0, torch.tensor([80.0]), noise=torch.randn_like(x0) * (1 - given), given=given)
    assert torch.allclose(seen["x"][:, 0], x0[:, 0] / 0.5)  # EDM's c_in at sigma = 0 is 1 / sigma_data


# ----------------------------------------------------------------------------- frame attention

def attention_lengths(model, x, **kw) -> list[int]:
    lengths = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        lengths.append(q.shape[-2])
        return original(q, k, v, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        model(x, torch.tensor([500.0]), **kw)
    finally:
        F.scaled_dot_product_attention = original
    return lengths


def test_factorized_attention_alternates_and_never_attends_over_all_tokens():
    pc = PatchConfig("video", 1, (8, 16, 16), 4)  # 8 frames x 16 tokens
    factorized = DiT(DiTConfig(patch=pc, hidden_size=32, depth=4, num_heads=2, attention="factorized"))
    joint = DiT(DiTConfig(patch=pc, hidden_size=32, depth=4, num_heads=2, attention="joint"))
    x = torch.randn(1, 8, 1, 16, 16)
    assert attention_lengths(factorized, x) == [16, 8, 16, 8]  # spatial, temporal, spatial, temporal
    assert attention_lengths(joint, x) == [128] * 4
    assert sum(p.numel() for p in factorized.parameters()) == sum(p.numel() for p in joint.parameters())


def test_temporal_blocks_carry_information_across_frames():
    pc = PatchConfig("video", 1, (8, 16, 16), 4)
    torch.manual_seed(0)
    model = DiT(DiTConfig(patch=pc, hidden_size=32, depth=2, num_heads=2, attention="factorized"))
    for p in model.parameters():  # adaLN-Zero starts as the identity; give every layer weight
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 8, 1, 16, 16)
    y = x.clone()
    y[:, 0] += 1  # change only frame 0
    delta = (model(x, torch.tensor([500.0])) - model(y, torch.tensor([500.0]))).abs()
    assert delta[:, 5].max() > 1e-3  # frame 5 sees frame 0 through the temporal block
    spatial_only = DiT(DiTConfig(patch=pc, hidden_size=32, depth=1, num_heads=2, attention="factorized"))
    for p in spatial_only.parameters():
        torch.nn.init.normal_(p, std=0.2)
    delta = (spatial_only(x, torch.tensor([500.0])) - spatial_only(y, torch.tensor([500.0]))).abs()
    assert delta[:, 1:].max() == 0  # a spatial block alone keeps frames apart


# ----------------------------------------------------------------------------- pipeline

def test_pipeline_outputs_frames_tensor_and_is_deterministic(pipe):
    out = pipe(class_labels=[3, 7], num_inference_steps=3, generator=0, progress=False)
    assert out.videos.shape == (2, 8, 1, 16, 16) and out.videos.min() >= -1 and out.videos.max() <= 1
    assert len(out.frames) == 2 and len(out.frames[0]) == 8
    assert out.frames[0][0].size == (16, 16) and out.frames[0][0].mode == "L"
    again = pipe(class_labels=[3, 7], num_inference_steps=3, generator=0, progress=False, output_type="pt")
    assert torch.equal(again, out.videos)
    guided = pipe(class_labels=[3, 7], num_inference_steps=3, generator=0, guidance_scale=3.0, progress=False,
                  output_type="pt")
    assert guided.shape == again.shape and not torch.equal(guided, again)


def test_fewer_frames_than_trained(pipe):
    for frames in (1, 5):
        assert pipe(class_labels=[1], num_frames=frames, num_inference_steps=2, progress=False,
                    output_type="pt").shape == (1, frames, 1, 16, 16)
    with pytest.raises(ValueError, match="num_frames must be between 1 and 8"):
        pipe(class_labels=[1], num_frames=9, progress=False)


def test_given_frames_come_back_exactly(pipe):
    first = torch.rand(2, 1, 16, 16) * 2 - 1
    out = pipe(class_labels=[2, 5], first_frame=first, num_inference_steps=3, generator=0, progress=False,
               output_type="pt")
    assert torch.equal(out[:, 0], first) and not torch.equal(out[:, 1], out[:, 0])
    # guidance doubles the batch: the given mask must be doubled with it
    guided = pipe(class_labels=[2, 5], first_frame=first, num_inference_steps=3, guidance_scale=2.5,
                  progress=False, output_type="pt")
    assert torch.equal(guided[:, 0], first)
    # any set of frames, in a clip shorter than trained; no labels: the class is inferred from them
    middle = torch.rand(1, 16, 16) * 2 - 1
    out = pipe(given_frames={0: first, 3: middle}, num_frames=6, num_inference_steps=3, progress=False,
               output_type="pt")
    assert out.shape == (2, 6, 1, 16, 16)
    assert torch.equal(out[:, 0], first) and torch.equal(out[:, 3], middle.expand(2, 1, 16, 16))


def test_unlabelled_given_frames_use_the_inferred_class_or_the_null_label(pipe):
    first, last = torch.rand(3, 1, 16, 16) * 2 - 1, torch.rand(3, 1, 16, 16) * 2 - 1
    kw = dict(num_inference_steps=3, generator=0, progress=False, output_type="pt")
    log_probs = pipe.classify(first) + pipe.classify(last)  # frames scored independently, summed
    assert log_probs.shape == (3, 10) and torch.allclose(pipe.classify(first).exp().sum(1), torch.ones(3))
    inferred = pipe(given_frames={0: first, 7: last}, **kw)
    labelled = pipe(class_labels=log_probs.argmax(1).tolist(), given_frames={0: first, 7: last}, **kw)
    assert torch.equal(inferred, labelled)  # same labels, the export's guidance
    null = pipe(given_frames={0: first, 7: last}, infer_label=False, **kw)
    assert torch.equal(null[:, 0], first) and not torch.equal(null, inferred)
    assert torch.equal(pipe.classify(first), pipe.classify(first))  # deterministic (fixed seed)
    assert not torch.equal(pipe.classify(first, seed=1), pipe.classify(first))


def test_first_frame_as_pil_image(pipe):
    image = Image.fromarray((torch.rand(16, 16) * 255).to(torch.uint8).numpy())
    out = pipe(class_labels=[4], first_frame=image, num_inference_steps=2, progress=False)
    assert out.frames[0][0].tobytes() == image.tobytes()


def test_bad_calls_name_the_problem(pipe):
    with pytest.raises(ValueError, match=r"class label out of range: got \[3, 10\], the model knows 0..9"):
        pipe(class_labels=[3, 10], progress=False)
    with pytest.raises(ValueError, match="class-conditional: pass class_labels"):
        pipe(progress=False)
    with pytest.raises(ValueError, match="given frame 8 is outside the 8 frames"):
        pipe(class_labels=[1], given_frames={8: torch.zeros(1, 16, 16)}, progress=False)
    with pytest.raises(ValueError, match="first_frame holds 2 pictures for a batch of 3; pass one or 3"):
        pipe(class_labels=[1, 2, 3], first_frame=torch.zeros(2, 1, 16, 16), progress=False)
    with pytest.raises(ValueError, match=r"given_frames\[0\] holds 2 pictures for a batch of 3"):
        pipe(num_videos=3, given_frames={0: torch.zeros(2, 1, 16, 16)}, progress=False)
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=[1], output_type="np", progress=False)


def test_save_mp4_gif_png(pipe, tmp_path):
    out = pipe(class_labels=[0, 1, 2], num_frames=6, num_inference_steps=2, progress=False)
    for suffix in (".mp4", ".gif", ".webm"):
        path = out.save(tmp_path / f"v{suffix}", scale=1)
        assert count_frames(path) == 6
    assert read_video(tmp_path / "v.mp4").shape[1:3] == (2 * 18 + 2, 2 * 18 + 2)  # 2x2 tiles, 2 px borders
    assert read_video(out.save(tmp_path / "big.mp4")).shape[1:3] == (7 * 38, 7 * 38)  # by default >= 256 px
    strip = Image.open(out.save(tmp_path / "v.png", scale=1))
    assert strip.size == (6 * 18 + 2, 3 * 18 + 2)  # a row of 6 frames per video
    assert Image.open(out.save(tmp_path / "big.png")).size == (5 * 110, 5 * 56)
    one = pipe(class_labels=[0], num_frames=4, num_inference_steps=2, progress=False)
    assert Image.open(one.save(tmp_path / "one.png", scale=2)).size == (2 * (4 * 18 + 2), 2 * (18 + 2))
    assert count_frames(one.save(tmp_path / "one.gif")) == 4


def test_training_run_logs_validation_media_and_exports(run):
    folder, pipe = run
    names = sorted(p.name for p in (folder / "samples").iterdir())
    assert names == [f"step-00000004{s}" for s in ("-i2v.gif", "-i2v.mp4", "-i2v.png", ".gif", ".mp4", ".png")]
    assert count_frames(folder / "samples" / "step-00000004.mp4") == 8
    assert isinstance(pipe, VideoPipeline) and pipe.max_frames == 8
    assert pipe.model.config.attention == "factorized" and pipe.model.config.given_embedding
    assert pipe.config.extra["class_names"] == [str(i) for i in range(10)]


# ----------------------------------------------------------------------------- data from folders

def test_video_folder_with_an_undecodable_file(tmp_path):
    for label, level in (("a", -0.5), ("b", 0.5)):
        for i in range(2):
            save_video(torch.full((12, 1, 16, 16), level), tmp_path / label / f"{i}.mp4")
    (tmp_path / "b" / "broken.mp4").write_bytes(b"not a video")
    task = VideoTask(VideoArgs(**{**TINY, "data": str(tmp_path), "num_frames": 4, "frame_stride": 3}))
    with pytest.warns(UserWarning, match="1 undecodable video"):
        task.setup()
    assert len(task.dataset) == 4 and task.num_classes == 2 and task.dataset.channels == 1
    item = task.dataset[0]
    assert item["video"].shape == (4, 1, 16, 16) and abs(item["video"].mean() + 0.5) < 0.02
    assert task.model.config.patch.size == (4, 16, 16)


# ----------------------------------------------------------------------------- configs

def test_default_recipe_is_the_moving_digits_config():
    from recipes.video_train import DEFAULT_CONFIG
    train, args = parse_config([TrainConfig, VideoArgs], [], default_config=DEFAULT_CONFIG)
    assert DEFAULT_CONFIG == CONFIGS / "video_moving_digits.yaml"
    # 16 frames of 8x8 digits (their native size) on a 16x16 canvas: at the same step cost it learns
    # far faster than 16x16 digits on 32x32 with patch 8 (docs/video.md)
    assert (args.data, args.num_frames, args.resolution, args.attention) == ("moving-digits", 16, 16, "factorized")
    assert train.output_dir == "runs/video-moving-digits" and train.max_steps > 0


def dit_params(d: int, depth: int, token_dim: int, out_dim: int, classes: int, freq: int = 256) -> int:
    """Parameters of the DiT written out layer by layer (DiT/Latte: adaLN-Zero blocks, mlp 4d)."""
    block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + (6 * d * d + 6 * d)
    embed = (token_dim * d + d) + (freq * d + d + d * d + d) + (classes + 1) * d + d  # x, t, y (+null), given
    final = (2 * d * d + 2 * d) + (d * out_dim + out_dim)
    return depth * block + embed + final


def test_ucf101_latte_config_builds_on_meta():
    train, args = parse_config([TrainConfig, VideoArgs], ["--config", str(CONFIGS / "video_ucf101_latte.yaml")])
    assert (args.num_frames, args.resolution, args.model, args.attention) == (16, 256, "DiT-XL/2", "factorized")
    assert train.mixed_precision == "bf16"
    task = VideoTask(args)
    with torch.device("meta"):
        sd_vae = AutoencoderKL(AutoencoderKLConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                                   down_block_types=("DownEncoderBlock2D",) * 4,
                                                   up_block_types=("UpDecoderBlock2D",) * 4, sample_size=256))
        latent = sd_vae.latent_shape((args.num_frames, 3, args.resolution, args.resolution))
        assert latent == (16, 4, 32, 32)
        model = DiT(task.dit_config_for(latent, num_classes=101))
    n = sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())
    # 673.8M; Latte-XL/2 reports 673.68M (learned sigma, no given-frame flag)
    assert n == dit_params(1152, 28, token_dim=4 * 2 * 2, out_dim=4 * 2 * 2, classes=101) == 673_781_776
    tokens = math.prod(model.patcher.grid(torch.empty(1, 16, 4, 32, 32, device="meta")))
    assert tokens == 16 * 256  # 4096 tokens: temporal blocks attend over 16, spatial over 256


# ----------------------------------------------------------------------------- the shipped default

@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_shipped_default_model_makes_the_requested_digits(dtype):
    """Also with bf16 weights, sampling's fast path (docs/video.md; these 20 videos: 99.7% of
    frames and 95% of videos right in both precisions)."""
    size = sum(p.stat().st_size for p in (ASSETS / VideoPipeline.default_model).rglob("*") if p.is_file())
    assert size <= 8 * 2**20
    pipe = mmdiff.pipeline("video") if dtype is None else mmdiff.pipeline("video", dtype=dtype)
    assert pipe.dtype == (dtype or torch.float32) and pipe.max_frames == 16
    assert (pipe.config.sampler, pipe.config.steps) == ("euler_ancestral", 50)
    labels = list(range(10)) * 2
    videos = pipe(class_labels=labels, generator=0, progress=False, output_type="pt")  # the export's defaults
    assert videos.shape == (20, 16, 1, 16, 16)
    scores = video_scores(videos, torch.tensor(labels), box=8)  # the digit is 8x8 on the 16x16 canvas
    # measured on 200 videos: 99.8% of frames right, 97% of videos one digit throughout
    assert scores["accuracy"] > 0.95 and scores["identity_consistency"] >= 0.85, scores
    assert scores["mean_speed"] > 1.0, scores  # the digits move (data: 1.9 px/frame)


def test_shipped_model_continues_an_unlabelled_first_frame_with_its_digit():
    """Image-to-video without a label: the pipeline reads the class off the given frame with the
    model's own likelihood, then generates for it. Measured on 300 / 100 held-out clips: the class
    inferred right for 96% / 97%, 96.8% of generated frames read as the given digit (docs/video.md)."""
    from recipes.video_eval import held_out
    pipe = mmdiff.pipeline("video")
    real, labels = held_out(pipe, 20, 16)
    inferred = pipe.classify(real[:, 0]).argmax(-1)
    assert (inferred == labels).float().mean() >= 0.8, (inferred, labels)
    clips = pipe(first_frame=real[:, 0], generator=0, progress=False, output_type="pt")
    assert torch.equal(clips[:, 0], real[:, 0])
    scores = video_scores(clips, labels, box=8)
    assert scores["accuracy"] >= 0.8, scores  # chance is 0.1; without inference ~0.2
