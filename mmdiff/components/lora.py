"""LoRA adapters on our networks, through peft: the training side (inject, freeze the base, save
the adapter in peft's layout) and the sampling side (load several adapters with weights, fuse and
unfuse them), for every modality's model (the DiT, or the text model around one).

An adapter folder is what peft's ``PeftModel.save_pretrained`` writes: ``adapter_config.json``
(a ``LoraConfig``; ``base_model_name_or_path`` names the base) and ``adapter_model.safetensors``
(keys ``base_model.model.<module>.lora_A.weight``). The safetensors header also records the base
model's class, config and weight fingerprint, so an adapter loaded onto another base is refused.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..core import checks
from ..core.checkpoint import CheckpointError, atomic_write_dir, config_to_dict, load_tensors, save_tensors

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # peft's key prefix (PeftModel wraps the base as base_model.model)
DEFAULT = "default"
# Module names (suffixes) by the part of the DiT block they adapt.
TARGET_GROUPS = {"attention": ("qkv", "attn.proj", "cross_attn.q", "cross_attn.kv", "cross_attn.proj"),
                 "mlp": ("fc1", "fc2"), "adaln": ("adaLN_modulation.1",)}


def target_modules(targets: str) -> list[str]:
    """``"attention,mlp"`` (groups of ``TARGET_GROUPS``) and/or module-name suffixes -> peft's list."""
    names = []
    for part in (p.strip() for p in targets.split(",") if p.strip()):
        names += TARGET_GROUPS.get(part, (part,))
    if not names:
        checks.fail("--lora_targets", f"groups {sorted(TARGET_GROUPS)} or module names, comma-separated", targets)
    return names


def lora_config(rank: int, alpha: float | None, dropout: float, targets: str):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout,
                      target_modules=target_modules(targets))


def add_adapter(model: nn.Module, config, name: str = DEFAULT) -> int:
    """Inject a LoRA adapter; only adapter parameters train afterwards. Returns their count."""
    from peft.functional import inject_adapter_in_model

    try:
        inject_adapter_in_model(config, model, adapter_name=name)
    except ValueError as e:  # peft: "Target modules ... not found in the base model"
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"--lora_targets {sorted(config.target_modules)} matches no layer of "
                         f"{type(model).__name__} ({e}); its linear layers are named {linear}") from None
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_layers(model: nn.Module) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict under its own names, whether or not adapters are injected."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over the class, config and every base tensor's name, shape and a strided sample of
    its values: tells one base model from another in milliseconds, even at DiT-XL size."""
    h = hashlib.sha256(type(model).__name__.encode())
    h.update(json.dumps(config_to_dict(model.config), sort_keys=True).encode())
    for name, t in sorted(base_state(model).items()):
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)].to("cpu", torch.float32).contiguous()
        h.update(f"{name}|{tuple(t.shape)}".encode() + sample.numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ files

def save_adapter(model: nn.Module, folder: str | os.PathLike, config, base: str | None,
                 name: str = DEFAULT, tensors: dict | None = None) -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` in peft's layout; ``tensors``: the
    adapter's weights if not the model's own (the EMA average)."""
    from peft.functional import get_peft_model_state_dict

    folder = Path(folder)
    weights = get_peft_model_state_dict(model, state_dict=tensors, adapter_name=name)
    config = copy.copy(config)
    config.base_model_name_or_path = base
    header = {"format": "pt", "mmdiff_base_class": type(model).__name__,
              "mmdiff_base_config": json.dumps(config_to_dict(model.config)),
              "mmdiff_base_fingerprint": base_fingerprint(model)}
    with atomic_write_dir(folder) as tmp:
        config.save_pretrained(str(tmp))
        save_tensors({PEFT_PREFIX + k: v for k, v in weights.items()}, tmp / ADAPTER_WEIGHTS, metadata=header)
    return folder


def read_adapter(folder: str | os.PathLike):
    """``(LoraConfig, weights under the model's names, header)`` of an adapter folder."""
    from peft import LoraConfig

    folder = Path(folder)
    for needed in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / needed).is_file():
            present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "nothing: no such folder"
            raise CheckpointError(f"{folder / needed} is missing (the folder holds {present}); an adapter folder "
                                  f"holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    raw = json.loads((folder / ADAPTER_CONFIG).read_text())
    if raw.get("peft_type") != "LORA":
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: a {raw.get('peft_type')!r} adapter; mmdiff loads LoRA adapters")
    tensors, header = load_tensors(folder / ADAPTER_WEIGHTS)
    return LoraConfig.from_pretrained(str(folder)), {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}, header


def check_base(model: nn.Module, header: dict, folder) -> None:
    """An adapter fits only the base it was trained on: same class and config (else its shapes are
    wrong), same weights (else it adapts a function that is not there)."""
    if "mmdiff_base_class" not in header:
        return  # an adapter written by peft itself carries no record; the shapes are checked on load
    if header["mmdiff_base_class"] != type(model).__name__ or json.loads(header["mmdiff_base_config"]) != config_to_dict(model.config):
        raise CheckpointError(f"{folder}: the adapter was trained on another {header['mmdiff_base_class']} "
                              f"(its config differs from this pipeline's model); load it onto its base model")
    if header.get("mmdiff_base_fingerprint") != base_fingerprint(model):
        raise CheckpointError(f"{folder}: the adapter was trained on other weights than this model's (fingerprint "
                              f"{header['mmdiff_base_fingerprint'][:12]} vs {base_fingerprint(model)[:12]}); load it "
                              f"onto the base it names in {ADAPTER_CONFIG} (base_model_name_or_path)")


def load_adapter(model: nn.Module, folder: str | os.PathLike, name: str = DEFAULT) -> None:
    """Inject the adapter of ``folder`` into ``model`` as ``name`` and load its weights, after
    checking the base and every tensor's name and shape."""
    from peft.functional import inject_adapter_in_model, set_peft_model_state_dict

    config, tensors, header = read_adapter(folder)
    check_base(model, header, folder)
    inject_adapter_in_model(config, model, adapter_name=name)
    expected = {k.replace(f".{name}.", "."): v for k, v in model.state_dict().items() if f".{name}." in k}
    for key, value in tensors.items():
        if key not in expected:
            raise CheckpointError(f"{folder / ADAPTER_WEIGHTS}: tensor '{key}' has no layer in this model")
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{folder / ADAPTER_WEIGHTS}: tensor '{key}' has shape {tuple(value.shape)}, this "
                                  f"model's layer needs {tuple(expected[key].shape)}: the adapter is for another base")
    set_peft_model_state_dict(model, tensors, adapter_name=name)


def merged(model: nn.Module, copy_first: bool = True) -> nn.Module:
    """``model`` with its active adapters merged into the weights and the LoRA layers removed: a
    plain model of its class that ``save_pretrained`` writes as any other (a copy by default)."""
    from peft.tuners.lora import LoraLayer

    model = copy.deepcopy(model) if copy_first else model
    for parent in list(model.modules()):
        for child, sub in list(parent.named_children()):
            if isinstance(sub, LoraLayer):
                sub.merge()
                setattr(parent, child, sub.get_base_layer())
    return model


# ------------------------------------------------------------------------------ pipelines

class LoraAdapters:
    """What a pipeline does with adapters: ``load_lora`` (several, each with its weight),
    ``set_lora_scales``, ``fuse_lora``/``unfuse_lora`` (merge the active ones into the weights
    for sampling at the base model's speed, and back), ``unload_lora`` and ``merge_lora`` (bake
    them in for good, e.g. before ``save_pretrained``). Mixed into ``Pipeline``."""

    @property
    def lora_scales(self) -> dict[str, float]:
        return dict(getattr(self, "_lora_scales", {}))

    def load_lora(self, path: str | os.PathLike, scale: float = 1.0, name: str | None = None) -> str:
        """Add the adapter in ``path`` (an adapter folder) with weight ``scale``; returns its name."""
        self._lora_unfused("load another adapter")
        scales = self.lora_scales
        name = name or f"lora{len(scales)}"
        if name in scales:
            raise ValueError(f"an adapter named {name!r} is loaded already; pass another name= or unload_lora({name!r})")
        load_adapter(self.model, path, name)
        self._set_scales({**scales, name: checks.number("scale", scale)})
        return name

    def set_lora_scales(self, scales: dict[str, float]) -> None:
        """The adapters that act and their weights: ``{"style": 0.8, "subject": 0.5}``; an adapter
        left out is off (still loaded)."""
        self._lora_unfused("change the adapters' weights")
        unknown = sorted(set(scales) - set(self.lora_scales))
        if unknown:
            raise ValueError(f"no adapter named {unknown}; loaded: {sorted(self.lora_scales)}")
        self._set_scales({k: checks.number(f"scales[{k!r}]", v) for k, v in scales.items()}, keep=True)

    def fuse_lora(self) -> None:
        for layer in lora_layers(self.model):
            layer.merge(adapter_names=list(self._active))
        self._fused = True

    def unfuse_lora(self) -> None:
        for layer in lora_layers(self.model):
            layer.unmerge()
        self._fused = False

    def unload_lora(self, name: str | None = None) -> None:
        """Remove one adapter (or all): the model is the base model again."""
        from peft.functional import delete_adapter

        self._lora_unfused("unload an adapter")
        names = [name] if name else list(self.lora_scales)
        for n in names:
            if n not in self.lora_scales:
                raise ValueError(f"no adapter named {n!r}; loaded: {sorted(self.lora_scales)}")
            delete_adapter(self.model, n, prefix="lora_")
        self._set_scales({k: v for k, v in self.lora_scales.items() if k not in names})
        if not self.lora_scales:
            merged(self.model, copy_first=False)  # no adapter left: plain layers again

    def merge_lora(self) -> None:
        """Bake the active adapters into the weights for good (the pipeline saves as a plain one)."""
        if getattr(self, "_fused", False):
            self.unfuse_lora()
        merged(self.model, copy_first=False)
        self._lora_scales, self._active = {}, []

    def _set_scales(self, scales: dict[str, float], keep: bool = False) -> None:
        from peft.functional import set_adapter

        if not keep:
            self._lora_scales = dict(scales)
        self._active = list(scales)
        if not self._active:
            return
        for layer in lora_layers(self.model):
            for n, s in scales.items():
                layer.set_scale(n, s)
        set_adapter(self.model, self._active, inference_mode=True)

    def _lora_unfused(self, what: str) -> None:
        if getattr(self, "_fused", False):
            raise ValueError(f"the adapters are fused into the weights: unfuse_lora() first to {what}")
