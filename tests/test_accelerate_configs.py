"""The shipped accelerate configurations parse as accelerate configs and say what they claim."""
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

CONFIGS = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"
EXPECTED = {
    "single_gpu.yaml": ("NO", 1, "bf16"),
    "multi_gpu_ddp_bf16.yaml": ("MULTI_GPU", 8, "bf16"),
    "fsdp_full_shard.yaml": ("FSDP", 8, "bf16"),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 8, "bf16"),
    "multi_node.yaml": ("MULTI_GPU", 16, "bf16"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses(name):
    cfg = load_config_from_file(str(CONFIGS / name))
    kind, processes, precision = EXPECTED[name]
    assert str(cfg.distributed_type).split(".")[-1] == kind
    assert (cfg.num_processes, str(cfg.mixed_precision).split(".")[-1].lower()) == (processes, precision)
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "DiTBlock"
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == 2
    if name == "multi_node.yaml":
        assert cfg.num_machines == 2


def test_slurm_script_resumes_and_checkpoints_on_sigterm():
    text = (CONFIGS / "slurm_multi_node.sh").read_text()
    assert "--resume_from_checkpoint latest" in text and "--signal=TERM@" in text
    assert "--machine_rank \"$SLURM_NODEID\"" in text
