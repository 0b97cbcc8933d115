"""Text-to-video for mmdiff's own models: ``--text_encoder`` conditions the video recipe on prompts
(captions of the data, or class names through ``--prompt_template``), the export carries the encoder,
and ``VideoPipeline`` takes ``prompt`` / ``prompt_embeds`` / ``negative_prompt_embeds`` (diffusers'
names) next to image-to-video. The slow test trains a text-conditioned moving-digits model briefly
and reads its samples with the reference classifier."""
import pytest
import torch

import mmdiff
from mmdiff.eval.digits import video_scores
from mmdiff.media import save_video
from mmdiff.modalities.video import VideoArgs, VideoTask
from recipes.video_train import main

import tiny_models

WORDS = ["a", "video", "of", "the", "digit"]
TEMPLATE = "a video of the digit {label}"


def tiny_bert(folder):
    return tiny_models.tiny_bert(folder, WORDS)


TINY = ["--num_frames", "4", "--resolution", "16", "--num_clips", "32", "--model", "DiT-S/4", "--hidden_size", "32",
        "--depth", "2", "--num_heads", "2", "--sample_steps", "3", "--batch_size", "8", "--max_steps", "3",
        "--checkpointing_steps", "3", "--validation_steps", "3", "--report_to", "none", "--progress", "false",
        "--mixed_precision", "no", "--prompt_template", TEMPLATE, "--max_prompt_length", "8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step run of the recipe with the tiny encoder (offline), validated and exported."""
    out = tmp_path_factory.mktemp("t2v")
    encoder = tiny_bert(out / "bert")
    export = main(TINY + ["--text_encoder", str(encoder), "--output_dir", str(out / "run")])
    return out / "run", export


@pytest.fixture(scope="module")
def pipe(trained):
    return mmdiff.pipeline("video", model=trained[1])


def call(pipe, **kw):
    return pipe(num_inference_steps=3, generator=0, progress=False, output_type="pt", **kw)


def test_the_recipe_trains_on_prompts_and_exports_the_encoder(trained, pipe):
    run, export = trained
    assert (export / "text_encoder" / "model.safetensors").is_file()
    assert not [p for p in export.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]
    c = pipe.model.config
    assert (c.context_dim, c.num_classes) == (16, 0)  # prompts, not labels
    assert pipe.config.guidance_scale == 4.0  # guidable against the empty prompt (the recipe's default)
    assert sorted(p.name for p in (run / "samples").glob("*.png"))  # validation sampled from prompts


def test_the_prompt_reaches_the_model(pipe):
    a = call(pipe, prompt=["a video of the digit 3", "a video of the digit 8"])
    b = call(pipe, prompt=["a video of the digit 3", "a video of the digit 3"])
    assert a.shape == (2, 4, 1, 16, 16)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def test_prompt_embeds_are_the_prompt(pipe):
    """Embeddings from the pipeline's own encoder give the prompt's video; the negative defaults
    to the empty prompt, as with text."""
    prompts = ["a video of the digit 5", "a video of the digit 2"]
    embeds, mask = pipe.components["text_encoder"](prompts)
    empty, empty_mask = pipe.components["text_encoder"]([""] * 2)
    text = call(pipe, prompt=prompts, guidance_scale=3.0)
    given = call(pipe, prompt_embeds=embeds, prompt_attention_mask=mask, guidance_scale=3.0)
    both = call(pipe, prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=empty,
                negative_prompt_attention_mask=empty_mask, guidance_scale=3.0)
    assert torch.equal(text, given) and torch.equal(text, both)
    other = call(pipe, prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=embeds,
                 guidance_scale=3.0)
    assert not torch.equal(text, other)  # the negative reaches the guidance


def test_image_to_video_with_a_prompt(pipe):
    first = torch.rand(2, 1, 16, 16) * 2 - 1
    clips = call(pipe, prompt="a video of the digit 1", num_videos=2, first_frame=first)
    assert torch.equal(clips[:, 0], first)
    assert call(pipe, first_frame=first).shape == (2, 4, 1, 16, 16)  # unprompted: unconditional, unguided


def test_bad_text_inputs_name_the_argument(pipe):
    with pytest.raises(ValueError, match=r"prompt_embeds must be a \(B, M, 16\) tensor"):
        call(pipe, prompt_embeds=torch.zeros(1, 8, 12))
    with pytest.raises(ValueError, match=r"negative_prompt_embeds must be a \(B, M, 16\) tensor"):
        call(pipe, prompt_embeds=torch.zeros(1, 8, 16), negative_prompt_embeds=torch.zeros(1, 8, 12))
    with pytest.raises(ValueError, match="pass prompt or prompt_embeds, not both"):
        call(pipe, prompt="a video of the digit 1", prompt_embeds=torch.zeros(1, 8, 16))
    with pytest.raises(ValueError, match="2 prompts"):
        call(pipe, prompt=["a video of the digit 1"] * 2, num_videos=3)
    labelled = mmdiff.pipeline("video")  # the shipped class-conditional model
    with pytest.raises(ValueError, match="not trained with a text encoder"):
        labelled(prompt="a video of the digit 1", num_inference_steps=2, progress=False)


def test_captions_next_to_videos_are_the_prompts(tmp_path):
    videos = tmp_path / "videos"
    for i, caption in enumerate(["a video of the digit 1", None]):
        save_video(torch.full((6, 1, 16, 16), 0.5), videos / f"{i}.mp4")
        if caption:
            (videos / f"{i}.txt").write_text(caption + "\n")
    task = VideoTask(VideoArgs(data=str(videos), num_frames=4, resolution=16, model="DiT-S/4", hidden_size=32,
                               depth=2, num_heads=2, text_encoder=str(tiny_bert(tmp_path / "enc")),
                               max_prompt_length=8))
    task.setup()
    items = sorted((task.dataset[i] for i in range(len(task.dataset))), key=lambda it: it["caption"])
    assert [it["caption"] for it in items] == ["", "a video of the digit 1"]  # "" where a video has none
    batch = {"video": torch.stack([it["video"] for it in items]), "caption": [it["caption"] for it in items]}
    assert task.prompts(batch) == ["", "a video of the digit 1"]
    assert task.conditioning(batch)["context"].shape == (2, 8, 16)
    assert task.model.config.context_dim == 16


# ----------------------------------------------------------------------------- learning (slow)

FRAMES, STEPS = 4, 2400  # the default recipe's model and 16x16 canvas, shorter clips and run
LEARN = ["--num_frames", str(FRAMES), "--max_steps", str(STEPS), "--learning_rate", "0.005", "--lr_warmup_steps", "50",
         "--checkpointing_steps", str(STEPS), "--validation_steps", "0", "--report_to", "none", "--progress", "false",
         "--prompt_template", TEMPLATE, "--max_prompt_length", "8"]
# Measured on this run (3.7 wall-minutes, one thread, on the shared 2-core CPU): 26.5% of the frames
# read as the prompted digit at the export's guidance 4 (chance 10%), 6.5-10% as another given
# digit; unguided 13%. The same steps with labels instead of prompts (``test_video_train.py``):
# 54.5%. Prompts learn slower than labels here: the tiny encoder's states differ between prompts
# in the digit's token alone. The bars leave room for noise.
ACCURACY = 0.2


@pytest.mark.slow
def test_a_text_conditioned_model_generates_the_prompted_digit(tmp_path):
    """Trained on "a video of the digit {label}" alone (no labels reach the model), the samples
    of each prompt are read as its digit by the reference classifier, and as it far more often
    than as another digit."""
    torch.set_num_threads(1)
    export = main(LEARN + ["--text_encoder", str(tiny_bert(tmp_path / "bert")), "--output_dir", str(tmp_path / "run")])
    pipe = mmdiff.pipeline("video", model=export)
    assert pipe.model.config.num_classes == 0 and pipe.model.config.context_dim == 16
    labels = torch.arange(10).repeat(5)
    videos = pipe(prompt=[TEMPLATE.format(label=i) for i in labels.tolist()], num_inference_steps=15,
                  sampler="dpmpp_2m", generator=0, progress=False, output_type="pt")
    scores = video_scores(videos, labels, box=8)
    other = video_scores(videos, (labels + 3) % 10, box=8)  # the same videos read against other digits
    print(f"\nprompted digit: {scores}; against other digits: {other['accuracy']:.3f}")
    assert scores["accuracy"] > ACCURACY and scores["accuracy"] > 2 * other["accuracy"], (scores, other)  # chance 0.1


def test_pooled_context_is_the_masked_mean_into_adaln():
    from mmdiff.core.dit import DiT, DiTConfig, pooled
    from mmdiff.core.patch import PatchConfig
    context, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).bool()
    assert torch.allclose(pooled(context, mask)[1], context[1, :2].mean(0))
    torch.manual_seed(0)
    config = DiTConfig(patch=PatchConfig("video", 1, (2, 8, 8), 4), hidden_size=32, depth=2, num_heads=2,
                       attention="factorized", context_dim=16, pooled_context=True)
    model = DiT(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # off adaLN-Zero's zeros, so the conditioning shows in the output
            p.add_(0.1 * torch.randn_like(p))
        x, t = torch.randn(2, 2, 1, 8, 8), torch.tensor([3.0, 500.0])
        noisy = context.clone()
        noisy[1, 2:] = 5.0
        a, b = model(x, t, context=context, context_mask=mask), model(x, t, context=noisy, context_mask=mask)
        assert torch.equal(a, b)  # padding reaches neither the cross-attention nor the pooled embedding
        model.pooled_embedder.fc2.weight.zero_()
        model.pooled_embedder.fc2.bias.zero_()
        without = model(x, t, context=context, context_mask=mask)
        assert (a - without).abs().max() > 1e-3  # the pooled prompt reaches the output through adaLN
