"""MONAI Label serves the LDSeg and GDM bundles: a real ``monailabel start_server`` and a real HTTP client.

The server runs MONAI Label's own, unmodified ``monaibundle`` sample app (copied out of the
installed wheel by ``monailabel apps --download``, which reads no network) with a packed
3D LDSeg bundle (segmentation with uncertainty) and the GDM MRI-to-CT bundle (image to
image: the result is a synthetic CT in HU) in its ``model/`` folder, and a studies folder
of NIfTI volumes.

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


def oblique_head(path: Path, work: Path) -> np.ndarray:
    """The project's head phantom MR (air around a head) with an oblique affine, for GDM."""
    import SimpleITK as sitk

    from ldmonai.data import make_mr_ct_phantoms

    make_mr_ct_phantoms(work, num_cases=1, size=40, seed=3)
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(next(work.rglob("mr.mha"))))).transpose(2, 1, 0)
    angle = np.deg2rad(8)  # a permuted, tilted axis set with anisotropic voxels, as scanners write
    rot = np.array([[0, -np.cos(angle), np.sin(angle)], [1, 0, 0], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.0, 1.1, 1.3])
    affine[:3, 3] = [40.0, -12.5, 3.0]
    nib.save(nib.Nifti1Image(mr.astype(np.float32), affine), path)
    return affine


def mni_head(path: Path) -> np.ndarray:
    """A whole 1 mm head with skull (the MNI152 2009a T1 from the nilearn wheel, 197x233x189)."""
    from ldmonai.prep.templates import MNI152_FILES, nilearn_template_dir

    image = nib.load(nilearn_template_dir() / MNI152_FILES["t1"])
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), image.affine), path)
    return image.affine


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

    # LDSeg 3D with its shipped tiny weights (MNI152 tissue at 4 mm; the checkpoint carries the
    # settings, spacing included), GDM with weights from its own network definition (the
    # server's job is to run what the bundle describes; accuracy is the bundle tests' business).
    from monai.bundle import ConfigParser

    from ldmonai.bundle import pack_bundle

    pack_bundle(ROOT / "bundles" / "ldseg", app / "model" / "ldseg_3d", {"spatial_dims": 3},
                weights=ROOT / "bundles" / "ldseg" / "models" / "demo_tiny_3d.pt")
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "gdm" / "configs" / "inference.json"))
    parser.update({"device": "$torch.device('cpu')"})
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "gdm_mri2ct.pt")
    pack_bundle(ROOT / "bundles" / "gdm", app / "model" / "gdm_mri2ct", {}, weights=root / "gdm_mri2ct.pt")

    studies = root / "studies"
    studies.mkdir()
    affines = {
        "case_a": oblique_volume(studies / "case_a.nii.gz", (40, 36, 24), 1),
        "case_b": oblique_volume(studies / "case_b.nii.gz", (32, 32, 32), 2),
        "head_c": oblique_head(studies / "head_c.nii.gz", root / "phantom"),
        "mni_head": mni_head(studies / "mni_head.nii.gz"),
    }
    # a truncated download: MONAI Label lists it like any study
    (studies / "broken_d.nii.gz").write_bytes((studies / "case_a.nii.gz").read_bytes()[:200])
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [python.parent / "monailabel", "start_server", "--app", app, "--studies", studies,
         "--host", "127.0.0.1", "--port", str(port),
         "--conf", "models", "ldseg_3d,gdm_mri2ct", "--conf", "zoo_source", "github", "--conf", "skip_trainers", "true",
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


def test_info_lists_the_bundles(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    model = info["models"]["ldseg_3d"]
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert model["labels"] == {"csf": 1, "grey_matter": 2, "white_matter": 3}
    # MONAI Label has no image-to-image task type; the bundle app lists GDM under its default.
    assert info["models"]["gdm_mri2ct"]["dimension"] == 3
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


def test_ldseg_serves_a_1mm_head_deterministically_and_interactively(server, tmp_path):
    """The shipped 3D weights on a whole 1 mm head: resampled to the model's 4 mm and back, one
    seeded sample per request, so the same request gives the same label map (docs/bundles.md)."""
    url = f"{server['url']}/infer/ldseg_3d"
    maps, seconds = [], []
    for i in range(2):
        start = time.perf_counter()
        r = requests.post(url, params={"image": "mni_head", "output": "image"}, data={"params": "{}"}, timeout=600)
        seconds.append(time.perf_counter() - start)
        assert r.status_code == 200, r.text[:2000]
        (tmp_path / f"{i}.nii.gz").write_bytes(r.content)
        label = nib.load(tmp_path / f"{i}.nii.gz")
        assert label.shape == (197, 233, 189)
        np.testing.assert_allclose(label.affine, server["affines"]["mni_head"], atol=1e-4)
        maps.append(np.asarray(label.dataobj))
    print(f"1 mm head through MONAI Label: {seconds[0]:.1f} s, then {seconds[1]:.1f} s")
    np.testing.assert_array_equal(maps[0], maps[1])
    assert set(np.unique(maps[0]).tolist()) <= {0, 1, 2, 3} and (maps[0] > 0).mean() > 0.05
    # docs/benchmarks.md records the time on an idle machine (the target is 30 s); this bound leaves
    # room for a busy CI runner while still failing on the 443 to 586 s of the first version
    assert seconds[1] < 90, seconds


@pytest.mark.parametrize("case", ["head_c", "case_b"])
def test_gdm_returns_hu_volume_on_input_grid(server, case, tmp_path):
    r = requests.post(f"{server['url']}/infer/gdm_mri2ct", params={"image": case, "output": "image"},
                      data={"params": "{}"}, timeout=600)
    assert r.status_code == 200, r.text[:2000]
    out = tmp_path / "sct.nii.gz"
    out.write_bytes(r.content)
    sct = nib.load(out)
    assert sct.shape == nib.load(server["studies"] / f"{case}.nii.gz").shape
    np.testing.assert_allclose(sct.affine, server["affines"][case], atol=1e-4)
    assert sct.get_data_dtype() == np.int16  # as the bundle's own SaveImaged writes it
    values = np.asarray(sct.dataobj, dtype=np.float32)
    assert np.isfinite(values).all() and values.min() >= -1024 and values.max() <= 3071, (values.min(), values.max())
    # No air is painted outside a guessed body mask any more (FillOutsideBodyd missed the skull and made
    # the written file score worse than the evaluate step); outside the body the values are the generator's.
    # The bundle folder stays clean: previews are a bundle-run extra, not a server side effect.
    assert not list((server["app"] / "model" / "gdm_mri2ct").rglob("*.png"))


@pytest.mark.parametrize("image, words", [("broken_d", "broken_d.nii.gz: image cannot be read"),
                                          ("no_such_id", "image not found")])
def test_a_bad_image_is_named_in_the_server_log(server, image, words):
    """MONAI Label 0.8.5 registers no exception handler, so any failure in a request is HTTP 500
    "Internal Server Error" for the client (docs/bundles.md says so). The bundle's first
    preprocessing step makes the server log name the image and the fix, in one line."""
    log = server["root"] / "server.log"
    before = log.stat().st_size
    r = requests.post(f"{server['url']}/infer/ldseg_3d", params={"image": image, "output": "image"},
                      data={"params": "{}"}, timeout=600)
    assert r.status_code == 500
    # Starlette sends the 500 first and has the error logged after it: wait for the line
    deadline = time.time() + 30
    while True:
        text = log.read_text()[before:]
        lines = [line for line in text.splitlines() if line.startswith("ldmonai.errors.LdmonaiError:")]
        if lines or time.time() > deadline:
            break
        time.sleep(0.5)
    assert lines and words in lines[-1] and "fix:" in lines[-1], text[-3000:]
