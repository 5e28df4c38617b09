"""Every bundle under bundles/ against the MONAI bundle conventions, checked with MONAI's own tools.

- layout of the specification and the model-zoo bundles;
- ``verify_metadata`` against tests/bundle/meta_schema.json (a local copy: the official
  schema is a release download, and tests never use the network);
- ``verify_net_in_out`` on the bundle network, and on the denoisers with a timestep (and
  LD's text context) through ``extra_forward_args``. LD's bundle network is the whole
  text-to-image model, whose forward takes slices and prompts, so its check is the denoiser's;
- ``ckpt_export`` to TorchScript. LD is not exported: its denoiser takes a latent, a
  timestep and a text context, which ``ckpt_export``'s single ``input_shape`` cannot
  describe, and its text encoder takes strings. LDSeg does not script: MONAI's ``DiffusionModelUNet``
  and the scheduler loop are Python that TorchScript's compiler rejects (untyped
  ``nn.Module`` attributes, keyword-only calls). It traces: the 10 DDIM steps unroll into
  the graph and the start noise stays a random op, so the export is checked against the
  eager model under the same seed, at a size other than the traced one.
"""

import json
import re
import tomllib
from pathlib import Path

import pytest
import torch

from conftest import monai_bundle

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(__file__).parent / "bundle" / "meta_schema.json"
BUNDLES = sorted(p.parent.parent for p in (ROOT / "bundles").glob("*/configs/metadata.json"))
REQUIRED = [
    "configs/metadata.json", "configs/train.json", "configs/inference.json", "configs/evaluate.json",
    "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "LICENSE", "models/large_files.yml",
]


def pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {"ldmonai": project["version"]}
    for dep in project["dependencies"]:
        m = re.match(r"^([A-Za-z0-9_.-]+)==([\w.]+)$", dep)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def test_there_are_bundles():
    assert [b.name for b in BUNDLES] and "ldseg" in [b.name for b in BUNDLES]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_layout_and_versions(bundle):
    missing = [f for f in REQUIRED if not (bundle / f).is_file()]
    assert not missing, f"{bundle.name} lacks {missing}"
    # Configs instantiate ldmonai classes; a bundle carries no Python of its own.
    assert not list(bundle.rglob("*.py")), list(bundle.rglob("*.py"))
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    pinned = pins()
    assert meta["monai_version"] == pinned["monai"]
    assert meta["pytorch_version"] == pinned["torch"]
    assert meta["required_packages_version"]["ldmonai"] == pinned["ldmonai"]
    assert meta["version"] in meta["changelog"]
    for part in ("inputs", "outputs"):
        for name, spec in meta["network_data_format"][part].items():
            assert len(spec["channel_def"]) == spec["num_channels"], (part, name)
    for name in ("train.json", "inference.json", "evaluate.json", "multi_gpu_train.json"):
        config = json.loads((bundle / "configs" / name).read_text())
        targets = re.findall(r'"_target_":\s*"([^"]+)"', json.dumps(config))
        assert targets or name == "evaluate.json", name


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_verify_metadata_against_local_schema(bundle):
    meta = bundle / "configs" / "metadata.json"
    monai_bundle("verify_metadata", "--meta_file", meta, "--filepath", SCHEMA)


def test_the_schema_has_teeth(tmp_path):
    """A metadata file without a mandatory key fails (checked once: the schema is the same for every bundle)."""
    meta = BUNDLES[0] / "configs" / "metadata.json"
    broken = json.loads(meta.read_text())
    del broken["network_data_format"]["outputs"]["pred"]["channel_def"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    proc = monai_bundle("verify_metadata", "--meta_file", tmp_path / "metadata.json", "--filepath", SCHEMA, check=False)
    assert proc.returncode != 0 and "channel_def" in proc.stderr


# bundles whose network_def takes one plain tensor (LD's takes slices and prompts)
PLAIN_TENSOR = [b for b in BUNDLES if b.name != "ld_slice_generator"]


@pytest.mark.parametrize("bundle", PLAIN_TENSOR, ids=lambda p: p.name)
def test_verify_net_in_out(bundle):
    configs = bundle / "configs"
    monai_bundle("verify_net_in_out", "--net_id", "network_def", "--meta_file", configs / "metadata.json",
                 "--config_file", configs / "inference.json", "--n", 4)


def test_verify_denoiser_with_timesteps():
    """The LDSeg denoiser alone: ``[z_t, embedding]`` in, noise out, with ``timesteps`` as an extra argument."""
    configs = ROOT / "bundles" / "ldseg" / "configs"
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    # the model settings are expressions (read from the checkpoint): resolve them as a run does
    inference = {k: parser.get_parsed_content(k) for k in ("latent_channels", "embed_channels")}
    fmt = "_meta_#network_data_format#"
    from monai.bundle import verify_net_in_out

    def verify(out_channels: int) -> None:
        # In-process: a timestep tensor cannot travel through the command line's parser.
        verify_net_in_out(
            net_id="denoiser", meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"),
            device="cpu", n=1, extra_forward_args={"timesteps": torch.tensor([500])},
            **{
                "denoiser": "$@network_def.denoiser",
                f"{fmt}inputs#image#num_channels": inference["latent_channels"] + inference["embed_channels"],
                f"{fmt}outputs#pred#num_channels": out_channels,
            },
        )

    verify(inference["latent_channels"])
    # and it does compare: a wrong channel count is caught
    with pytest.raises(ValueError, match="output channel number"):
        verify(inference["latent_channels"] + 1)


def test_ckpt_export_traces_ldseg(tmp_path):
    configs = ROOT / "bundles" / "ldseg" / "configs"
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser["device"] = "$torch.device('cpu')"
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    monai_bundle(
        "ckpt_export", "--net_id", "network_def", "--filepath", tmp_path / "model.ts", "--ckpt_file", tmp_path / "model.pt",
        "--meta_file", configs / "metadata.json", "--config_file", configs / "inference.json",
        "--use_trace", True, "--input_shape", "[1, 1, 32, 32]",
    )
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    extra = {"metadata.json": ""}
    torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads((configs / "metadata.json").read_text())["version"]
    image = torch.rand(2, 1, 48, 64)
    with torch.no_grad():
        torch.manual_seed(3)
        eager = net(image)
        torch.manual_seed(3)
        traced = exported(image)
    assert traced.shape == (2, 4, 48, 64)
    torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception):
        torch.jit.script(net)


def test_ckpt_export_scripts_gdm(tmp_path):
    """GDM's generator is a plain MONAI ``UNet``: it scripts, no tracing needed."""
    configs = ROOT / "bundles" / "gdm" / "configs"
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    monai_bundle(
        "ckpt_export", "--net_id", "network_def", "--filepath", tmp_path / "model.ts", "--ckpt_file", tmp_path / "model.pt",
        "--meta_file", configs / "metadata.json", "--config_file", configs / "inference.json",
    )
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 1, 32, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x))


def test_verify_ld_denoiser_with_timesteps_and_context():
    """LD's denoiser: a noisy latent in, noise out, with ``timesteps`` and a ``(B, L, D)`` text context."""
    configs = ROOT / "bundles" / "ld_slice_generator" / "configs"
    inference = json.loads((configs / "inference.json").read_text())
    from monai.bundle import verify_net_in_out

    context = torch.zeros(1, inference["max_prompt_length"], inference["text_dim"])
    verify_net_in_out(net_id="denoiser", meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"),
                      device="cpu", n=1, extra_forward_args={"timesteps": torch.tensor([500]), "context": context},
                      denoiser="$@network_def.unet")
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(net_id="denoiser", meta_file=str(configs / "metadata.json"),
                          config_file=str(configs / "inference.json"), device="cpu", n=1,
                          extra_forward_args={"timesteps": torch.tensor([500]), "context": context},
                          denoiser="$@network_def.unet", **{"_meta_#network_data_format#outputs#pred#num_channels": 5})
