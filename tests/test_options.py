"""One ``SamplingOptions`` for every modality: keywords and the options object give the same
samples, defaults come from the pipeline, and a bad value gets the same message everywhere."""
import pytest
import torch

import mmdiff
from mmdiff import SamplingOptions


@pytest.fixture(scope="module")
def shipped():
    return {task: mmdiff.pipeline(task) for task in ("image", "video", "text")}


def call(pipe, **sampling):
    """The smallest sample of each modality, with ``sampling`` passed through unchanged."""
    if pipe.task == "image":
        return pipe(class_labels=[3, 5], output_type="pt", **sampling)
    if pipe.task == "video":
        return pipe(class_labels=[4], num_frames=2, output_type="pt", **sampling)
    return pipe.generate_ids(num_samples=2, length=8, **sampling)


@pytest.mark.parametrize("task", ["image", "video", "text"])
def test_options_object_equals_keywords(shipped, task):
    pipe = shipped[task]
    keywords = dict(sampler="dpmpp_2m_sde", num_inference_steps=4, eta=0.5, generator=1, progress=False)
    opts = SamplingOptions(sampler="dpmpp_2m_sde", num_inference_steps=4, sampler_options={"eta": 0.5},
                           generator=1, progress=False)
    a, b = call(pipe, **keywords), call(pipe, options=opts)
    assert torch.equal(a, b)
    other = call(pipe, options=opts, eta=0.0)  # a keyword updates the object's value
    assert not torch.equal(a, other)


def test_defaults_come_from_the_pipeline(shipped):
    for pipe in shipped.values():
        resolved = pipe.options()
        assert resolved.sampler == pipe.config.sampler and resolved.num_inference_steps == pipe.config.steps
        assert resolved.spacing == pipe.config.spacing and resolved.guidance_scale == pipe.config.guidance_scale
        assert resolved.progress is pipe.progress
    assert shipped["text"].options().progress is False and shipped["image"].options().progress is True
    grid = shipped["image"].sigmas(5)
    assert shipped["image"].options(sigmas=grid).num_inference_steps is None


BAD = [
    (dict(num_inference_steps=0), ValueError, r"num_inference_steps must be an integer in \[1, 10000\], got 0"),
    (dict(num_inference_steps=2.5), ValueError, r"num_inference_steps must be an integer in \[1, 10000\], got 2.5"),
    (dict(sampler="dpm"), ValueError, r"unknown sampler 'dpm'; choose one of \["),
    (dict(spacing="cosine"), ValueError, r"unknown spacing 'cosine'; choose one of \["),
    (dict(sampler="euler", eta=0.3), ValueError, r"sampler 'euler' has no option\(s\) \['eta'\]; its options are \[\]"),
    (dict(sigmas=[1.0, 0.0], num_inference_steps=3), ValueError, "either sigmas .* or num_inference_steps"),
    (dict(options={"sampler": "euler"}), TypeError, "options must be a SamplingOptions, got dict"),
]


@pytest.mark.parametrize("bad, error, message", BAD, ids=[next(iter(b)) for b, _, _ in BAD])
def test_a_bad_value_gets_the_same_message_in_every_modality(shipped, bad, error, message):
    seen = set()
    for pipe in shipped.values():
        with pytest.raises(error, match=message) as info:
            call(pipe, progress=False, **bad)
        seen.add(str(info.value).split("; choose one of")[0])  # text adds the 'warp' spacing to the list
    assert len(seen) == 1, seen
