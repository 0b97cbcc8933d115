"""The Trainer under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def launch(script_args, tmp_path, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "0", *script_args]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["image", "video", "text", "image-lora"])
def test_two_ranks_train_one_model(tmp_path, modality):
    out = tmp_path / "run"
    launch([str(ROOT / "tests" / "dist_worker.py"), modality, str(out)], tmp_path)
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    assert ranks[0]["hash"] == ranks[1]["hash"]  # identical weights at the end
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])  # each rank its own shard
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 4 * 8
    means = [(a + b) / 2 for a, b in zip(ranks[0]["local"], ranks[1]["local"])]
    assert ranks[0]["logged"] == pytest.approx(means, rel=1e-6)  # logged loss = mean over ranks
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000004"]  # exactly one
    assert sorted(p.name for p in (out / "checkpoints" / "step-00000004" / "rng").iterdir()) == [
        "rank-0.pt", "rank-1.pt"]
    # a LoRA run exports the adapter (peft's layout), the others a pipeline
    exported = "adapter_model.safetensors" if modality == "image-lora" else "pipeline.json"
    assert (out / "export" / exported).is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no stray temporary folders
