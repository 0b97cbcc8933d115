import pytest
import torch

from mmdiff.core.ema import EMA


def test_inverse_power_warmup_values():
    ema = EMA(torch.nn.Linear(2, 2), decay=0.999, power=0.75)
    assert ema.decay_at(1) == pytest.approx(1 - 2**-0.75)
    assert ema.decay_at(10) == pytest.approx(1 - 11**-0.75)
    assert ema.decay_at(10**9) == 0.999  # capped at the target
    assert EMA(torch.nn.Linear(2, 2), decay=0.9, warmup="none").decay_at(1) == 0.9


def test_average_matches_closed_form_and_restores():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5, warmup="none")
    values = [1.0, 2.0, 3.0]
    for v in values:
        with torch.no_grad():
            model.weight.fill_(v)
        ema.update(model)
    expected = 0.0
    for v in values:
        expected = 0.5 * expected + 0.5 * v
    assert ema.shadow["weight"].item() == pytest.approx(expected)
    with ema.averaged(model):
        assert model.weight.item() == pytest.approx(expected)
    assert model.weight.item() == 3.0


def test_state_round_trip_and_mismatch():
    a = torch.nn.Linear(3, 3)
    ema = EMA(a)
    ema.update(a)
    other = EMA(torch.nn.Linear(3, 3))
    other.load_state_dict(ema.state_dict())
    assert other.step == 1 and all(torch.equal(other.shadow[k], ema.shadow[k]) for k in ema.shadow)
    with pytest.raises(ValueError, match="shape"):
        EMA(torch.nn.Linear(3, 4)).load_state_dict(ema.state_dict())
