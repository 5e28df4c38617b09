"""MONAI Label serves the LDSeg bundle: a real ``monailabel start_server`` and a real HTTP client.

The server runs MONAI Label's own, unmodified ``monaibundle`` sample app (copied out of the
installed wheel by ``monailabel apps --download``, which reads no network) with a packed
3D LDSeg bundle in its ``model/`` folder and a studies folder of NIfTI volumes.

MONAI Label lives in ``.venv-label`` (``make label-env``): monailabel imports torchvision,
and the registry has no CPU-only torchvision wheel, so that environment holds the CUDA
build of the same torch 2.13.0. It runs on CPU. The main environment stays on the CPU
wheel; the install step checks both.
"""

import os
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
LABEL_VENV = ROOT / ".venv-label"
LABEL_PY = LABEL_VENV / "bin" / "python"
pytestmark = pytest.mark.slow


def label_env() -> Path:
    """Build ``.venv-label`` with ``make label-env`` (monailabel, ldmonai without its dependencies;
    a no-op when up to date) and check its torch and the main environment's."""
    proc = subprocess.run(["make", "-s", "label-env"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"make label-env failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    out = subprocess.run(
        [LABEL_PY, "-c", "import torch, torchvision, monailabel; "
                         "print(torch.__version__, torchvision.__version__, monailabel.__version__)"],
        capture_output=True, text=True, check=True).stdout.split()
    assert out[0].split("+")[0] == "2.13.0" and out[1].split("+")[0] == "0.28.0" and out[2] == "0.8.5", out
    # The main environment was not touched: still the CPU wheel, no CUDA packages.
    assert torch.__version__.split("+")[0] == "2.13.0" and torch.version.cuda is None, torch.__version__
    from importlib.metadata import distributions

    nvidia = sorted(d.metadata["Name"] for d in distributions() if d.metadata["Name"].lower().startswith("nvidia"))
    assert not nvidia, nvidia
    return LABEL_PY


def oblique_volume(path: Path, shape, seed: int) -> np.ndarray:
    """A NIfTI volume with a rotated, shifted, anisotropic affine: the output must keep it."""
    rng = np.random.default_rng(seed)
    data = rng.random(shape).astype(np.float32)
    data[8:-8, 8:-8, 6:-6] += 2.0
    angle = np.deg2rad(12)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.2, 0.9, 2.0])
    affine[:3, 3] = [-30.5, 12.25, 7.0]
    nib.save(nib.Nifti1Image(data, affine), path)
    return affine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    python = label_env()
    root = tmp_path_factory.mktemp("label")
    apps = root / "apps"
    # The monailabel launcher is a shell script that runs `python` from PATH.
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([python.parent / "monailabel", "apps", "--download", "--name", "monaibundle", "--output", apps],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and (apps / "monaibundle" / "main.py").is_file(), proc.stdout + proc.stderr
    app = apps / "monaibundle"
    pristine = sorted(p.relative_to(app) for p in app.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert Path("main.py") in pristine

    # A packed 3D bundle with weights from its own network definition (the server's job is
    # to run what the bundle describes; accuracy is the bundle tests' business).
    from monai.bundle import ConfigParser

    from ldmonai.bundle import pack_bundle

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "ldseg" / "configs" / "inference.json"))
    parser["spatial_dims"] = 3
    parser["device"] = "$torch.device('cpu')"
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "model.pt")
    pack_bundle(ROOT / "bundles" / "ldseg", app / "model" / "ldseg_3d", {"spatial_dims": 3}, weights=root / "model.pt")

    studies = root / "studies"
    studies.mkdir()
    affines = {
        "case_a": oblique_volume(studies / "case_a.nii.gz", (40, 36, 24), 1),
        "case_b": oblique_volume(studies / "case_b.nii.gz", (32, 32, 32), 2),
    }
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [python.parent / "monailabel", "start_server", "--app", app, "--studies", studies,
         "--host", "127.0.0.1", "--port", str(port),
         "--conf", "models", "ldseg_3d", "--conf", "zoo_source", "github", "--conf", "skip_trainers", "true",
         "--conf", "sam2", "false", "--conf", "preload", "false"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}:\n{(root / 'server.log').read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            raise AssertionError(f"server did not start:\n{(root / 'server.log').read_text()[-4000:]}")
        yield {"url": url, "studies": studies, "affines": affines, "root": root, "app": app, "pristine": pristine}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_info_lists_the_bundle(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    model = info["models"]["ldseg_3d"]
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert model["labels"] == {"csf": 1, "grey_matter": 2, "white_matter": 3}
    # The sample app runs as shipped: its files equal the wheel's copy byte for byte.
    shipped = LABEL_VENV / "monailabel" / "sample-apps" / "monaibundle"
    for rel in server["pristine"]:
        assert (server["app"] / rel).read_bytes() == (shipped / rel).read_bytes(), rel


@pytest.mark.parametrize("case", ["case_a", "case_b"])
def test_infer_returns_label_on_input_grid(server, case, tmp_path):
    url = f"{server['url']}/infer/ldseg_3d"
    r = requests.post(url, params={"image": case, "output": "image"}, data={"params": "{}"}, timeout=600)
    assert r.status_code == 200, r.text[:2000]
    out = tmp_path / "label.nii.gz"
    out.write_bytes(r.content)
    label = nib.load(out)
    source = nib.load(server["studies"] / f"{case}.nii.gz")
    assert label.shape == source.shape
    np.testing.assert_allclose(label.affine, server["affines"][case], atol=1e-4)
    values = np.unique(np.asarray(label.dataobj))
    assert set(values.tolist()) <= {0, 1, 2, 3}, values
    # The uncertainty summary travels in the JSON result.
    r = requests.post(url, params={"image": case, "output": "json"}, data={"params": "{}"}, timeout=600)
    assert r.status_code == 200, r.text[:2000]
    result = r.json()
    unc = result["uncertainty"]
    assert set(unc) == {"entropy", "variance"}
    assert 0.0 <= unc["entropy"]["all"] <= np.log(4) + 1e-5 and unc["variance"]["all"] >= 0.0
