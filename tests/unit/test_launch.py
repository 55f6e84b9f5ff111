"""The accelerate command a hardware profile turns into, ZeRO-3 weight blocks, the batch default."""
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from rltool import launch, train_backend
from rltool.config import HardwareConfig, register_configs


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_launch_command_carries_the_profile():
    h = HardwareConfig(name="multinode", device="cuda", num_processes=16, num_machines=2, machine_rank=1,
                       main_process_ip="10.0.0.5", zero_stage=3, offload_optimizer=True)
    command = launch.launch_command(h, ["train", "algo=gspo"])
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert flag(command, "--config_file") == launch.accelerate_config() and launch.accelerate_config().endswith("zero3.yaml")
    assert (flag(command, "--num_processes"), flag(command, "--num_machines"), flag(command, "--machine_rank"),
            flag(command, "--main_process_ip")) == ("16", "2", "1", "10.0.0.5")
    assert (flag(command, "--zero_stage"), flag(command, "--offload_optimizer_device"),
            flag(command, "--offload_param_device")) == ("3", "cpu", "none")
    assert command[-4:] == ["-m", "rltool", "train", "algo=gspo"]


def test_cpu_ranks_split_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # what the parent set for itself
    env = launch.launch_env(HardwareConfig(name="cpu_zero3", device="cpu", num_processes=4, zero_stage=3))
    assert env["DS_ACCELERATOR"] == "cpu" and env["OMP_NUM_THREADS"] == "4"
    assert "DS_ACCELERATOR" not in launch.launch_env(HardwareConfig(name="g", device="cuda", num_processes=8, zero_stage=3))


def test_needs_launch_only_outside_a_launcher(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    z3 = HardwareConfig(name="cpu_zero3", num_processes=2, zero_stage=3)
    assert launch.needs_launch(z3) and not launch.needs_launch(HardwareConfig(name="cpu"))
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not launch.needs_launch(z3)


def test_blocks_group_parameters_by_layer():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                                         num_key_value_heads=1, vocab_size=32, tie_word_embeddings=True))
    blocks = train_backend.blocks(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [len(b) for b in blocks] == [1, 9, 9, 9, 1]  # embedding (tied head), 3 layers of 9 tensors, final norm
    assert all(names[id(p)].startswith("model.layers.1.") for p in blocks[2])
    assert sum(len(b) for b in blocks) == len(list(model.parameters()))


def test_weights_for_engine_without_deepspeed_keeps_tied_names():
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, vocab_size=32, tie_word_embeddings=True))
    names = [n for n, _ in train_backend.weights_for_engine(model)]
    assert "lm_head.weight" in names and "lm_head.weight" not in [n for n, _ in train_backend.weights_for_engine(
        model, remove_duplicate=True)]


def test_default_batch_divides_over_any_profile():
    register_configs()
    cfg = OmegaConf.create({"hardware": {"num_processes": 1}, "p": "${multiple_of:4,${hardware.num_processes}}"})
    assert [OmegaConf.merge(cfg, {"hardware": {"num_processes": n}}).p for n in (1, 2, 3, 8, 16)] == [4, 4, 6, 8, 16]
