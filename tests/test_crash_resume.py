"""Crash safety of every recipe (and of LoRA fine-tuning): N steps straight == k steps, SIGKILL (or
SIGTERM mid-run), resume from `latest`, train to N, bit for bit (weights, EMA and optimizer state) on CPU."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
N = 120  # long enough that the signal lands mid-run after the first checkpoint (step K)
K = 40
RECIPES = {
    "image": ["recipes/image_train.py", "--patch_size", "2", "--hidden_size", "32", "--depth", "1",
              "--num_heads", "2", "--batch_size", "16", "--sample_steps", "2"],
    # depth 2: factorized attention gets one spatial and one temporal block
    "video": ["recipes/video_train.py", "--num_frames", "4", "--hidden_size", "32", "--depth", "2",
              "--num_heads", "2", "--batch_size", "4", "--sample_steps", "2"],
    # LoRA on the shipped digits model: checkpoints hold only the adapters, the base comes from the export
    "image-lora": ["recipes/image_train.py", "--init_from", str(ROOT / "mmdiff" / "assets" / "image-digits"),
                   "--lora_rank", "4", "--batch_size", "16", "--sample_steps", "2"],
    # the default corpus, so the SentencePiece model trained at the start is reused on resume
    "text": ["recipes/text_train.py", "--vocab_size", "512", "--max_length", "32", "--embed_dim", "8",
             "--hidden_size", "32", "--depth", "1", "--num_heads", "2", "--batch_size", "8", "--sample_steps", "2"],
}
COMMON = ["--report_to", "none", "--progress", "false", "--validation_steps", "0", "--deterministic", "true",
          "--max_steps", str(N), "--checkpointing_steps", str(K), "--learning_rate", "0.001"]


def command(recipe, out, *extra):
    return [sys.executable, str(ROOT / RECIPES[recipe][0]), *RECIPES[recipe][1:], *COMMON,
            "--output_dir", str(out), *extra]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run(cmd):
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def interrupt(cmd, sig, out):
    """Start training, wait for the first checkpoint (or for a few steps), then send ``sig``."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = out / "checkpoints" / f"step-{K:08d}"
    deadline = time.time() + 300
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(sig)
    output = proc.communicate(timeout=300)[0]
    return proc.returncode, output


def final_state(out):
    ckpt = out / "checkpoints" / f"step-{N:08d}"
    optim = torch.load(ckpt / "optimizer.pt", weights_only=True)
    return load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "ema.safetensors")), optim


def assert_identical(a, b):
    (wa, ea, oa), (wb, eb, ob) = a, b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)
    for i, state in oa["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob["state"][i][name])), (i, name)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, recipe, sig):
    run(command(recipe, tmp_path / "straight"))
    out = tmp_path / "interrupted"
    code, output = interrupt(command(recipe, out), sig, out)
    if sig == signal.SIGTERM:
        assert code == 0 and "stopped by SIGTERM" in output  # graceful: checkpoint, then exit
        saved = sorted(p.name for p in (out / "checkpoints").iterdir())
        assert saved[-1] != f"step-{N:08d}"
    else:
        assert code == -signal.SIGKILL
    assert not (out / "export").exists()
    run(command(recipe, out, "--resume_from_checkpoint", "latest"))
    assert_identical(final_state(tmp_path / "straight"), final_state(out))
