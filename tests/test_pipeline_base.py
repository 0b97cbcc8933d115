"""The pipeline registry and the shared Pipeline base (save/load, the one sampling path)."""
import pytest
import torch

import mmdiff
from mmdiff.core.checkpoint import CheckpointError
from mmdiff.core.dit import DiT, DiTConfig
from mmdiff.core.patch import PatchConfig
from mmdiff.core.schedules import get_schedule
from mmdiff.pipelines import Given, Pipeline, Start
from mmdiff.registry import PIPELINES, PipelineConfig, register_pipeline


@register_pipeline("toy")
class ToyPipeline(Pipeline):
    pass


def toy(num_classes=3, dropout=0.1):
    torch.manual_seed(0)
    model = DiT(DiTConfig(patch=PatchConfig("image", 1, (4, 4), 1), hidden_size=16, depth=1, num_heads=2,
                          num_classes=num_classes, class_dropout=dropout))
    return ToyPipeline({"model": model}, get_schedule("flow"), PipelineConfig(prediction="flow", steps=4)).to()


def solve(pipe, shape, *, cond=None, uncond=None, given=None, start=None, **sampling):
    """``Pipeline.solve`` with the sampling options as keywords, the way a modality's __call__ passes them."""
    return pipe.solve(shape, pipe.options(**sampling), cond=cond, uncond=uncond, given=given, start=start)


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'audio'; known tasks are \[.*'toy'"):
        mmdiff.pipeline("audio")
    assert PIPELINES["toy"] is ToyPipeline


def test_save_load_round_trip_and_task_check(tmp_path):
    pipe = toy()
    pipe.save_pretrained(tmp_path / "p")
    again = mmdiff.pipeline("toy", model=tmp_path / "p")
    assert again.config == pipe.config and again.config.task == "toy"
    assert again.schedule.sigmas(4).tolist() == pipe.schedule.sigmas(4).tolist()
    y = torch.tensor([0, 1])
    a = solve(pipe, (2, 1, 4, 4), cond={"class_labels": y}, generator=1, progress=False)
    b = solve(again, (2, 1, 4, 4), cond={"class_labels": y}, generator=1, progress=False)
    assert torch.equal(a, b)

    @register_pipeline("other")
    class Other(Pipeline):
        pass
    with pytest.raises(CheckpointError, match="holds a 'toy' pipeline, not 'other'"):
        Other.from_pretrained(tmp_path / "p")
    with pytest.raises(CheckpointError, match="pipeline.json is missing"):
        ToyPipeline.from_pretrained(tmp_path / "p" / "model")


def test_solve_is_batch_invariant_and_guidance_needs_uncond():
    pipe = toy()
    y = torch.tensor([2, 0, 1])
    kw = dict(num_inference_steps=3, sampler="euler_ancestral", progress=False)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    full = solve(pipe, (3, 1, 4, 4), cond={"class_labels": y}, generator=gens, **kw)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    first = solve(pipe, (1, 1, 4, 4), cond={"class_labels": y[:1]}, generator=gens[:1], **kw)
    assert torch.allclose(full[:1], first, atol=1e-6)
    with pytest.raises(ValueError, match="guidance_scale != 1 needs an unconditional input"):
        solve(pipe, (1, 1, 4, 4), cond={"class_labels": y[:1]}, guidance_scale=3.0, progress=False)
    null = torch.full((3,), pipe.model.null_class)
    guided = solve(pipe, (3, 1, 4, 4), cond={"class_labels": y}, uncond={"class_labels": null},
                        guidance_scale=3.0, num_inference_steps=3, generator=0, progress=False)
    assert guided.shape == (3, 1, 4, 4) and torch.isfinite(guided).all()


def test_solve_takes_a_schedule_of_ones_own():
    """``sigmas=`` replaces the step count and spacing: the pipeline's own grid passed in gives the
    same samples, another grid other samples, and a bad one a clear error."""
    pipe = toy()
    pipe.model.eval()  # no class dropout
    with torch.no_grad():  # off adaLN-Zero's init, where the network outputs 0 whatever the grid
        for p in pipe.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    kw = dict(cond={"class_labels": torch.tensor([0, 2])}, generator=3, progress=False)
    grid = pipe.sigmas(5, "karras")
    ours = solve(pipe, (2, 1, 4, 4), num_inference_steps=5, spacing="karras", **kw)
    assert torch.equal(solve(pipe, (2, 1, 4, 4), sigmas=grid, **kw), ours)
    assert torch.equal(solve(pipe, (2, 1, 4, 4), sigmas=grid.tolist(), **kw), ours)
    assert not torch.allclose(solve(pipe, (2, 1, 4, 4), sigmas=pipe.sigmas(5, "logsnr"), **kw), ours)
    with pytest.raises(ValueError, match="either sigmas .* or num_inference_steps/spacing"):
        solve(pipe, (2, 1, 4, 4), sigmas=grid, num_inference_steps=5, **kw)
    with pytest.raises(ValueError, match="strictly decreasing"):
        solve(pipe, (2, 1, 4, 4), sigmas=grid.flip(0), **kw)


def test_solve_keeps_known_content_and_img2img():
    pipe = toy()
    known = torch.randn(2, 1, 4, 4)
    mask = torch.zeros_like(known)
    mask[..., :2] = 1
    y = torch.tensor([0, 1])
    out = solve(pipe, (2, 1, 4, 4), cond={"class_labels": y}, given=Given(known, mask, renoise=True),
                generator=0, progress=False)
    assert torch.equal(out[..., :2], known[..., :2])
    seen = []
    solve(pipe, (2, 1, 4, 4), cond={"class_labels": y}, start=Start(known, 0.5), num_inference_steps=10,
          callback=lambda s: seen.append(s["sigma"]), generator=0, progress=False)
    assert len(seen) == 5 and seen[0] == pytest.approx(float(pipe.sigmas(10)[5]))
