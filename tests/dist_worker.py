"""Run by tests/test_distributed.py under `accelerate launch --multi_gpu --num_processes 2`.

Trains a tiny model of one recipe (image, video or text) and writes, per rank, what the test
checks: a hash of the final weights, the data indices this rank saw, its local losses, and (main)
the losses the Trainer logged.
"""
import hashlib
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import default_collate

from mmdiff.pipelines import ASSETS
from mmdiff.training import TrainConfig, Trainer


def tiny_task(modality: str, out: str):
    if modality == "image":
        from mmdiff.modalities.image import ImageArgs, ImageTask
        return ImageTask, (ImageArgs(patch_size=2, hidden_size=32, depth=1, num_heads=2, sample_steps=2),)
    if modality == "image-lora":  # the shipped digits model's options, adapted with LoRA
        from mmdiff.modalities.image import ImageArgs, ImageTask
        return ImageTask, (ImageArgs(patch_size=2, hidden_size=128, depth=6, num_heads=4, class_embed_std=1.0,
                                     sample_steps=2),)
    if modality == "video":
        from mmdiff.modalities.video import VideoArgs, VideoTask
        return VideoTask, (VideoArgs(num_frames=4, resolution=16, num_clips=256, patch_size=4, hidden_size=32,
                                     depth=2, num_heads=2, sample_steps=2),)
    from mmdiff.modalities.text import TextArgs, TextTask
    return TextTask, (TextArgs(data="markov", vocab_size=32, max_length=16, embed_dim=8, hidden_size=32, depth=1,
                               num_heads=2, sample_steps=2),)


def recording(task_cls):
    """The task, recording which examples (by index) and which local losses each rank's steps used."""
    class Recording(task_cls):
        def setup(self):
            super().setup()
            base = self.dataset

            class Indexed(torch.utils.data.Dataset):
                def __len__(self):
                    return len(base)

                def __getitem__(self, i):
                    return {**base[i], "index": torch.tensor(i)}
            self.dataset = Indexed()
            self.seen, self.local_losses = [], []

        def collate(self, items):
            inner = getattr(super(), "collate", default_collate)
            return {**inner([{k: v for k, v in it.items() if k != "index"} for it in items]),
                    "index": torch.stack([it["index"] for it in items])}

        def loss(self, model, batch):
            loss, logs = super().loss(model, batch)
            self.seen += batch["index"].tolist()
            self.local_losses.append(loss.item())
            return loss, logs
    return Recording


def main(modality: str, out: str):
    cls, args = tiny_task(modality, out)
    kwargs = {"output_dir": out} if modality == "text" else {}
    task = recording(cls)(*args, **kwargs)
    lora = {"init_from": str(ASSETS / "image-digits"), "lora_rank": 4} if modality == "image-lora" else {}
    cfg = TrainConfig(output_dir=out, max_steps=4, batch_size=8, checkpointing_steps=4, validation_steps=0,
                      report_to="none", progress=False, log_steps=1, **lora)
    trainer = Trainer(task, cfg)
    logged = []
    trainer.accelerator.log = lambda values, step=None: logged.append(values["loss"])
    trainer.train()
    rank = trainer.accelerator.process_index
    weights = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    digest = hashlib.sha256(b"".join(w.numpy().tobytes() for w in weights.values())).hexdigest()
    record = {"hash": digest, "seen": task.seen, "local": task.local_losses, "logged": logged,
              "world": trainer.accelerator.num_processes}
    Path(out, f"rank-{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
