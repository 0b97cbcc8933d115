"""The same models on a GPU: the DiT's forward and gradients match the CPU's, and each modality's
shipped pipeline samples on CUDA what it samples on the CPU (noise comes from per-sample CPU
generators, so both devices start from the same numbers). Skipped, and reported as skipped, where
torch sees no CUDA device; run on a GPU machine with ``pytest tests/test_cuda.py``."""
import pytest
import torch

import mmdiff
from mmdiff.core.dit import DiT
from mmdiff.eval.digits import classify, video_scores
from mmdiff.modalities.image import ImageArgs, ImageTask
from mmdiff.training import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def exact_fp32():
    """float32 products in float32 (cuDNN's convolutions default to TF32, ~1e-3 off)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


def test_dit_forward_and_gradients_match_the_cpu():
    torch.manual_seed(0)
    cpu = DiT.from_preset("DiT-S/2", in_channels=4, input_size=16, num_classes=10, depth=3, out_channels=8)
    for p in cpu.parameters():  # adaLN-Zero starts at zero: give every weight a value to check
        p.data.normal_(0, 0.05)
    gpu = DiT.from_preset("DiT-S/2", in_channels=4, input_size=16, num_classes=10, depth=3, out_channels=8).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x, t, y = torch.randn(4, 4, 16, 16), torch.tensor([1.0, 250.0, 500.0, 999.0]), torch.tensor([0, 3, 7, 10])
    outs, grads = [], []
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        model.eval()  # no label dropout: the same labels reach both
        out = model(x.to(dev), t.to(dev), y.to(dev))
        out.square().mean().backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert outs[1].is_cuda and relative(outs[1], outs[0]) < 1e-5
    assert relative(grads[1], grads[0]) < 1e-4
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        low = gpu(x.cuda(), t.cuda(), y.cuda())
    assert relative(low.float(), outs[0].detach()) < 3e-2  # bf16 operands: ~1e-2


def test_a_warm_solve_never_waits_for_the_gpu():
    # Every level reaches the denoiser with its host value, so nothing is read back per evaluation:
    # with sync debugging set to "error", any device-to-host read inside the solve raises.
    from mmdiff.core.guidance import cfg
    from mmdiff.core.parametrization import Denoiser
    from mmdiff.core.samplers import sample
    from mmdiff.core.schedules import get_schedule
    sched = get_schedule("linear")
    model = DiT.from_preset("DiT-S/2", in_channels=4, input_size=16, num_classes=10, depth=2).cuda().eval()
    labels = torch.arange(4, device="cuda")
    den = cfg(Denoiser(model, sched, "eps"), 4.0, {"class_labels": labels},
              {"class_labels": torch.full_like(labels, 10)}, interval=(0.5, 50.0))
    x, grid = torch.randn(4, 4, 16, 16, device="cuda"), sched.sigmas(10)
    for sampler in ("euler", "heun", "dpmpp_2m", "unipc"):
        sample(den, x, grid, sampler, progress=False)
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = sample(den, x, grid, sampler, progress=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(out).all()


def test_image_pipeline_samples_the_same_digits_on_cuda():
    labels = list(range(10)) * 4
    cpu = mmdiff.pipeline("image")(class_labels=labels, generator=0, output_type="pt", progress=False)
    pipe = mmdiff.pipeline("image", device="cuda")
    assert pipe.device.type == "cuda"
    gpu = pipe(class_labels=labels, generator=0, output_type="pt", progress=False)
    assert relative(gpu, cpu) < 1e-3
    accuracy = (classify(gpu.cpu()) == torch.tensor(labels)).float().mean().item()
    assert accuracy >= 0.9, accuracy  # the shipped model: 97.5% on the CPU


def test_video_pipeline_samples_the_same_videos_on_cuda():
    labels = list(range(10))
    kw = dict(class_labels=labels, generator=0, output_type="pt", progress=False, num_inference_steps=25)
    cpu = mmdiff.pipeline("video")(**kw)
    gpu = mmdiff.pipeline("video", device="cuda")(**kw)
    assert relative(gpu, cpu) < 1e-2  # 25 ancestral steps: float32 rounding grows a little per step
    scores = video_scores(gpu.cpu(), torch.tensor(labels), box=8)
    assert scores["accuracy"] > 0.9, scores


def test_text_pipeline_writes_the_same_tokens_on_cuda():
    kw = dict(num_samples=4, length=32, num_inference_steps=16, generator=0, progress=False)
    cpu = mmdiff.pipeline("text").generate_ids(**kw)
    gpu = mmdiff.pipeline("text", device="cuda").generate_ids(**kw)
    assert gpu.device.type == "cuda"
    same = (gpu.cpu() == cpu).float().mean().item()
    assert same >= 0.95, same  # a token whose two best logits tie within rounding may flip


def test_trainer_trains_and_exports_on_cuda(tmp_path):
    """The EMA average follows the weights to the GPU (it was made on the CPU before accelerate
    moved the model, and the first update failed), and validation and export sample there."""
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=4, batch_size=16, validation_steps=2,
                      checkpointing_steps=4, report_to="none", progress=False)
    trainer = Trainer(ImageTask(ImageArgs(patch_size=2, hidden_size=32, depth=1, num_heads=2, sample_steps=3)), cfg)
    export = trainer.train()
    assert trainer.accelerator.device.type == "cuda"
    assert {v.device.type for v in trainer.ema.shadow.values()} == {"cuda"}
    pipe = mmdiff.pipeline("image", model=export, device="cuda")
    images = pipe(class_labels=[1, 2], num_inference_steps=3, generator=0, output_type="pt", progress=False)
    assert images.shape[0] == 2 and bool(torch.isfinite(images).all())
