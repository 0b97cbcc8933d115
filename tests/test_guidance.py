"""Guidance and given content are denoiser wrappers; samplers never see them."""
import pytest
import torch

from mmdiff.core.analytic import gaussian
from mmdiff.core.guidance import cfg, keep_known, partial_start
from mmdiff.core.samplers import SAMPLERS, sample
from mmdiff.core.schedules import get_schedule


class Linear:
    """D(x, sigma; y) = a*x + y, counting forwards and batch sizes."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, y=None, **kw):
        self.calls.append(x.shape[0])
        return 0.5 * x + (0 if y is None else y)


def test_cfg_formula_in_one_batched_forward():
    d = Linear()
    x, s = torch.randn(3, 2), torch.full((3,), 2.0)
    yc, yu = torch.ones(3, 2), torch.zeros(3, 2)
    out = cfg(d, 4.0, {"y": yc}, {"y": yu})(x, s)
    d_c, d_u = 0.5 * x + yc, 0.5 * x + yu
    assert torch.allclose(out, d_u + 4.0 * (d_c - d_u))
    assert d.calls == [6]  # cond and uncond together
    d.calls.clear()
    assert torch.allclose(cfg(d, 1.0, {"y": yc}, {"y": yu})(x, s), d_c) and d.calls == [3]


def test_cfg_interval_and_rescale():
    d = Linear()
    x, yc, yu = torch.randn(2, 8), torch.randn(2, 8), torch.zeros(2, 8)
    guided = cfg(d, 3.0, {"y": yc}, {"y": yu}, interval=(0.5, 5.0))
    assert torch.allclose(guided(x, torch.full((2,), 10.0)), 0.5 * x + yc)  # outside: conditional only
    assert not torch.allclose(guided(x, torch.full((2,), 1.0)), 0.5 * x + yc)
    full = cfg(d, 3.0, {"y": yc}, {"y": yu}, rescale=1.0)(x, torch.ones(2))
    assert torch.allclose(full.std(dim=1), (0.5 * x + yc).std(dim=1), rtol=1e-5)  # std pulled back


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_known_region_is_exact_after_every_sampler(name):
    g = gaussian(torch.zeros(6), 1.0)
    known = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.zeros(4, 6, dtype=torch.float64)
    mask[:, :2] = 1
    sig = get_schedule("edm").sigmas(8, dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64) * sig[0]
    out = sample(keep_known(g, known, mask), x, sig, name, generator=0, progress=False)
    assert torch.equal(out[:, :2], known[:, :2])
    assert out[:, 2:].abs().max() < 10  # the rest was sampled, not left at sigma_max scale


def test_keep_known_clean_vs_renoised_inputs_and_mask_kwarg():
    seen = {}

    def d(x, sigma, given=None):
        seen["x"], seen["given"] = x.clone(), given
        return torch.zeros_like(x)

    known, mask = torch.ones(1, 4), torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    x, s = torch.full((1, 4), 7.0), torch.tensor([2.0])
    keep_known(d, known, mask, mask_kwarg="given")(x, s)
    assert torch.equal(seen["x"], torch.tensor([[1.0, 1.0, 7.0, 7.0]])) and torch.equal(seen["given"], mask)
    noise = torch.full((1, 4), 0.5)
    keep_known(d, known, mask, noise=noise)(x, s)
    assert torch.equal(seen["x"], torch.tensor([[2.0, 2.0, 7.0, 7.0]]))  # 1 + 2 * 0.5 where given


def test_partial_start_runs_the_last_fraction():
    sig = get_schedule("linear").sigmas(20)
    x0, noise = torch.zeros(1, 3), torch.ones(1, 3)
    x, tail = partial_start(x0, sig, 0.6, noise)
    assert len(tail) == 13 and torch.equal(tail, sig[8:])  # 12 steps + the final 0
    assert torch.allclose(x, torch.full((1, 3), float(sig[8])))
    with pytest.raises(ValueError, match="strength"):
        partial_start(x0, sig, 0.0, noise)
