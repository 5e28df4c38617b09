"""``multi_gpu_train.json`` under torchrun: 2 processes on CPU with the gloo backend.

The same config runs NCCL on GPUs; only the backend and device expressions differ.
After a few steps both ranks must hold identical weights (DDP averaged the gradients
and started from the same initialisation), and only rank 0 may have written
checkpoints and TensorBoard events.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port
from ldmonai.data import make_brain_slices, make_mr_ct_phantoms, make_tissue_dataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def ldseg_data(root: Path) -> list:
    make_tissue_dataset(root, 2, num_train=8, num_val=2, size=32, seed=0)
    return ["--batch_size", 2, "--patch_size", 32]


def gdm_data(root: Path) -> list:
    make_mr_ct_phantoms(root, num_cases=12, size=32, seed=0)  # 8 training, 2 validation, 2 test cases
    return ["--batch_size", 2]


def ld_data(root: Path) -> list:
    make_brain_slices(root, num_slices=18, size=32, seed=0)  # 16 training slices
    return ["--batch_size", 2, "--pretrained_path", "$None"]


def torchrun(configs, *args):
    files = repr([str(c) for c in configs])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "monai.bundle", "run", "--config_file", files, *map(str, args)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.parametrize("bundle, make_data", [("ldseg", ldseg_data), ("gdm", gdm_data), ("ld_slice_generator", ld_data)])
def test_two_gloo_ranks_end_with_identical_weights(tmp_path, bundle, make_data):
    configs = ROOT / "bundles" / bundle / "configs"
    data_args = make_data(tmp_path / "data")
    # Test-only addition: each rank writes its final weights, so they can be compared.
    dump = tmp_path / "dump_weights.json"
    dump.write_text(json.dumps({"finalize": [
        "$torch.save(@network.module.state_dict(), @output_dir + f'/rank{dist.get_rank()}.pt')",
        "$dist.barrier()",
        "$dist.destroy_process_group()",
    ]}))
    runs = tmp_path / "runs"
    proc = torchrun([configs / "train.json", configs / "multi_gpu_train.json", dump],
                    "--bundle_root", tmp_path, "--dataset_dir", tmp_path / "data", "--output_dir", runs,
                    "--ckpt_dir", tmp_path / "models", "--epochs", 2, "--val_interval", 2, *data_args)
    rank0 = torch.load(runs / "rank0.pt", weights_only=True)
    rank1 = torch.load(runs / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    # Training moved the weights away from their initialisation.
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    torch.manual_seed(0)
    fresh = parser.get_parsed_content("network_def").state_dict()
    assert any(not torch.equal(fresh[k], rank0[k]) for k in rank0 if rank0[k].is_floating_point())
    # 8 training cases, 2 ranks, batch 2: 2 iterations per rank per epoch, 4 in all.
    assert "Epoch[2] Complete" in proc.stdout + proc.stderr
    # Rank 0 alone writes: one set of checkpoints, one best model, one TensorBoard writer.
    ckpts = sorted(p.name for p in (tmp_path / "models").glob("checkpoint_epoch=*.pt"))
    assert ckpts == ["checkpoint_epoch=2.pt"], ckpts
    assert (tmp_path / "models" / "model.pt").is_file()
    events = list(runs.glob("events.out.tfevents.*"))
    assert events and len({e.name.split(".")[4] for e in events}) == 1, [e.name for e in events]
