"""The trained weights as the EMA, validation, checkpoints and the export need them, whatever
distributed wrapper (DDP, FSDP, DeepSpeed) or ``torch.compile`` holds the model."""
from __future__ import annotations

from contextlib import contextmanager

from accelerate.utils import DistributedType

from ..components.lora import add_adapter


def gathered_state_dict(accelerator, model) -> dict:
    """Full weights, gathered on the main process (a collective under FSDP / ZeRO-3), keyed as
    the bare model's (``torch.compile`` prefixes keys with ``_orig_mod.``)."""
    state = accelerator.get_state_dict(model)
    return {k.replace("_orig_mod.", ""): v for k, v in state.items()}


@contextmanager
def ema_weights(accelerator, bare, model, ema, lora=None):
    """The model with the EMA weights, usable by the main process (None on other ranks). Under
    FSDP/DeepSpeed the parameters are split across ranks, so the main process alone cannot run
    the model: the EMA weights are gathered (a collective) into an unsharded copy first, which
    gets the same adapters (``lora``, a LoraConfig) as the trained model."""
    main = accelerator.is_main_process
    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with ema.averaged(bare):
            yield bare.eval() if main else None
        bare.train()
        return
    with ema.averaged(bare):
        state = gathered_state_dict(accelerator, model)
    copy = None
    if main:
        copy = type(bare)(bare.config)  # models are built as cls(config)
        if lora is not None:
            add_adapter(copy, lora)
        copy.load_state_dict(state)
    yield copy.eval() if copy is not None else None
