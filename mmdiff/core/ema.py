"""Exponential moving average of weights, with the warmup that keeps early averages useful."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """``decay`` is the target; with ``warmup="inverse_power"`` the decay at step n is
    ``1 - (1 + n / inv_gamma) ** -power`` capped at ``decay`` (power 2/3 suits runs of ~1e5-1e6
    steps, 3/4 shorter ones), so an average started from random weights forgets them quickly."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: str = "inverse_power",
                 inv_gamma: float = 1.0, power: float = 2 / 3, min_decay: float = 0.0, keys=None):
        if warmup not in ("inverse_power", "none"):
            raise ValueError(f"unknown EMA warmup '{warmup}'; choose 'inverse_power' or 'none'")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.inv_gamma, self.power, self.min_decay = decay, warmup, inv_gamma, power, min_decay
        # ``keys``: average only these (LoRA: the adapters; the frozen base needs no average)
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()
                       if v.is_floating_point() and (keys is None or k in keys)}
        self.step = 0

    def to(self, device) -> "EMA":
        """Keep the average where the weights are (a model moved to a GPU after the EMA was made)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def decay_at(self, step: int) -> float:
        if self.warmup == "none":
            return self.decay
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(value, self.decay))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.step += 1
        weight = 1 - self.decay_at(self.step)
        current = model.state_dict()
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in names], [current[k].float() for k in names], weight)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        state = model.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v)

    @contextmanager
    def averaged(self, model: nn.Module):
        """Temporarily load the average into ``model`` (validation, export), then restore."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            state = model.state_dict()
            for k, v in backup.items():
                state[k].copy_(v)

    def state_dict(self) -> dict:
        return {"shadow": dict(self.shadow), "step": self.step, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} tensors, e.g. '{sorted(missing)[0]}': it was "
                             f"saved for a different model")
        for k in self.shadow:
            if self.shadow[k].shape != state["shadow"][k].shape:
                raise ValueError(f"EMA tensor '{k}' has shape {tuple(state['shadow'][k].shape)}, the model "
                                 f"has {tuple(self.shadow[k].shape)}")
            self.shadow[k].copy_(state["shadow"][k])
        self.step = int(state["step"])
