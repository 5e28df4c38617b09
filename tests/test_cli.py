"""The ``ldmonai`` command line: help with examples, one-line errors, exit codes, the demo."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ldmonai", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_examples():
    top = run("--help")
    assert top.returncode == 0 and "prep convert" in top.stdout
    conv = run("prep", "convert", "--help")
    assert conv.returncode == 0
    assert "examples:" in conv.stdout and "--workers" in conv.stdout and "--template" in conv.stdout


@pytest.mark.parametrize("args", [(), ("prep",), ("prep", "convert"), ("prep", "convert", "a", "b", "--workers", "0"),
                                  ("prep", "convert", "a", "b", "--bogus"), ("nosuch",),
                                  ("demo", "--export-weights")])
def test_bad_arguments_give_one_line_and_exit_2(args):
    res = run(*args)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ldmonai") and "error:" in lines[0], res.stderr


@pytest.mark.parametrize("args", [("prep", "convert", "{missing}", "{out}"),
                                  ("prep", "skullstrip", "{missing}", "{out}"),
                                  ("prep", "run", "{missing}.yaml", "{missing}", "{out}"),
                                  ("prep", "run", "configs/prep/brain_t1.yaml", "{missing}", "{out}")])
def test_a_missing_path_is_one_clear_line_and_exit_2(tmp_path, args):
    """`ldmonai --help` promises 2 for bad arguments or paths, in every subcommand; no OUT is left."""
    root = Path(__file__).resolve().parents[1]
    args = [a.format(missing=tmp_path / "missing", out=tmp_path / "out") for a in args]
    res = run(*args, cwd=root)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and ("not found" in res.stderr or "does not exist" in res.stderr)
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


def test_help_states_the_exit_codes():
    text = run("--help").stdout
    assert "0  everything done" in text and "1  the command ran, but some cases failed" in text
    assert "2  bad arguments or paths" in text


def test_bad_template_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    res = run("prep", "convert", str(tmp_path / "in"), str(tmp_path / "out"), "--template", "../{PatientID}")
    assert res.returncode == 2 and "template" in res.stderr and "Traceback" not in res.stderr


def test_demo_runs_every_stage_from_a_relative_out_dir(tmp_path):
    """The demo as a newcomer runs it: a relative --out-dir in another working directory (datalists
    hold paths relative to their own folder, so nothing is resolved twice). Each stage is checked
    against a known answer: the reference labels, the reference CT, the plausible brain volume."""
    import nibabel as nib
    import SimpleITK as sitk

    res = run("demo", "--out-dir", "demo", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    demo = tmp_path / "demo"
    for k in range(1, 9):  # a progress line with the wall time of each of the eight stages
        assert re.search(rf"^\[{k}/8\] .+: [0-9.]+ s$", res.stdout, re.M), res.stdout
    assert res.stdout.count("shipped tiny weights") == 5, res.stdout
    # 1. the four real scans of the pydicom wheel, each a series with a sidecar
    assert len(list((demo / "nifti").glob("*/*.nii.gz"))) == 4
    # 2. skull-stripping: an adult brain volume, on the input's grid
    mask_img = nib.load(next((demo / "prep").glob("*/*_mask.nii.gz")))
    ml = float(np.asarray(mask_img.dataobj).sum()) * float(np.prod(mask_img.header.get_zooms())) / 1000
    assert 900 < ml < 1900, ml
    # 3. LDSeg against the reference labels of its held-out cases
    data = json.loads((demo / "ldseg" / "data" / "datalist.json").read_text())
    assert not any(Path(e["image"]).is_absolute() for e in data["test"])
    for entry in data["test"]:
        stem = Path(entry["image"]).name.split(".")[0]
        seg = np.asarray(nib.load(demo / "ldseg" / "inference" / f"{stem}_seg.nii.gz").dataobj)
        ref = np.asarray(nib.load(demo / "ldseg" / "data" / entry["label"]).dataobj)
        dice = [2 * ((seg == c) & (ref == c)).sum() / ((seg == c).sum() + (ref == c).sum()) for c in (1, 2, 3)]
        assert np.mean(dice) > 0.6, (stem, dice)
    # 3b. LDSeg 3D (shipped 4 mm weights): the held-out volumes, on each volume's own grid
    data = json.loads((demo / "ldseg3d" / "data" / "datalist.json").read_text())
    for entry in data["test"]:
        stem = Path(entry["image"]).name.split(".")[0]
        seg = nib.load(demo / "ldseg3d" / "inference" / f"{stem}_seg.nii.gz")
        ref = nib.load(demo / "ldseg3d" / "data" / entry["label"])
        assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine, atol=1e-4)
        seg, ref = np.asarray(seg.dataobj), np.asarray(ref.dataobj)
        dice = [2 * ((seg == c) & (ref == c)).sum() / ((seg == c).sum() + (ref == c).sum()) for c in (1, 2, 3)]
        assert np.mean(dice) > 0.4, (stem, dice)  # 0.53 measured (CSF 0.22, grey 0.73, white 0.65)
    # 4. GDM synthesises CT for the two held-out cases only, closer to the reference than water
    sct = sorted((demo / "gdm" / "inference").glob("*_sct.nii.gz"))
    assert [p.name for p in sct] == ["HPH008_sct.nii.gz", "HPH009_sct.nii.gz"], sct
    for path in sct:
        case = demo / "gdm" / "data" / "Task1" / "HN" / path.name[:6]
        ct = sitk.ReadImage(str(case / "ct.mha"))
        pred = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(path)), ct))
        ref, body = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(sitk.ReadImage(str(case / "mask.mha"))) > 0
        assert np.abs(pred - ref)[body].mean() < np.abs(ref)[body].mean(), path
    # 4b. sparse-view CT from the held-out CT volumes: on each CT's grid, and closer to it than its FBP
    from ldmonai.metrics import image_metrics

    for case in ("HPH008", "HPH009"):
        folder = demo / "gdm" / "data" / "Task1" / "HN" / case
        ct = sitk.ReadImage(str(folder / "ct.mha"))
        ref, body = sitk.GetArrayFromImage(ct).astype(float), sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mask.mha")))
        psnr = {}
        for kind in ("fbp", "svct"):
            out = sitk.ReadImage(str(demo / "gdm" / "svct" / f"{case}_{kind}.nii.gz"))
            assert out.GetSize() == ct.GetSize() and np.allclose(out.GetOrigin(), ct.GetOrigin(), atol=1e-3)
            psnr[kind] = image_metrics(ref, sitk.GetArrayFromImage(out).astype(float), body, names=("psnr",))["psnr"]
        assert psnr["svct"] > psnr["fbp"] + 1.0, (case, psnr)
        assert (demo / "gdm" / "svct" / f"{case}_preview.png").is_file()
    # 5. LD: slices are generated at 0 and, by default, at the δ the shipped weights were trained with
    ld = demo / "ld_slice_generator"
    import torch

    recorded = float(torch.load(ld / "models" / "model.pt", weights_only=True)["latent_drift"][0])
    assert recorded != 0  # the demo weights were fine-tuned with a searched δ
    assert json.loads((ld / "generated" / "prompts.json").read_text())["delta"] == pytest.approx(recorded, abs=1e-6)
    assert (ld / "delta_search" / "delta_search.csv").is_file()
    assert json.loads((ld / "generated_delta0" / "prompts.json").read_text())["delta"] == 0
    assert len(list((ld / "generated").glob("*.nii.gz"))) == 8
    assert (demo / "overview.png").is_file()
    # resume: a second run skips what is done (tested per stage: convert, prep run, bundle inference)


@pytest.mark.parametrize("bundle,name", [("ldseg", "demo_tiny.pt"), ("ldseg", "demo_tiny_3d.pt"), ("gdm", "demo_tiny.pt"), ("gdm", "demo_svct_tiny.pt"),
                                         ("ld_slice_generator", "demo_tiny.pt")])
def test_shipped_demo_weights_match_their_manifest(bundle, name):
    import torch

    from ldmonai.demo import shipped_weights, state_digest

    path = shipped_weights(bundle, name)
    assert path is not None, f"bundles/{bundle}/models/{name} or its manifest is missing"
    manifest = json.loads(path.with_suffix(".json").read_text())
    # produced by the bundle's own train config, as the manifest records
    assert any("configs/train.json" in arg for _, args in manifest["bundle_runs"] for arg in args), manifest
    assert path.stat().st_size < (9e6 if "3d" in name else 6e6) and torch.load(path, weights_only=True)
    assert state_digest(path) == manifest["state_sha256"]
    # the model-zoo manifest lists the same file and hash
    assert f'hash_val: "{manifest["sha256"]}"' in (path.parent / "large_files.yml").read_text()


def test_a_damaged_shipped_weight_file_is_one_clear_error(tmp_path, monkeypatch):
    import shutil

    from ldmonai import demo
    from ldmonai.errors import LdmonaiError

    models = tmp_path / "ldseg" / "models"
    shutil.copytree(demo.BUNDLES / "ldseg" / "models", models)
    (models / demo.SHIPPED).write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    monkeypatch.setattr(demo, "BUNDLES", tmp_path)
    with pytest.raises(LdmonaiError, match="sha256") as err:
        demo.shipped_weights("ldseg")
    assert "demo_tiny.pt" in str(err.value) and "--train" in str(err.value)
    family = demo._Family("LDSeg", "ldseg", tmp_path / "out")
    with pytest.raises(LdmonaiError, match="sha256"):
        family.weights(train=False, train_steps=[])
    assert family.weights(train=True, train_steps=[]) == 0  # retraining does not need the damaged file


ROOT = Path(__file__).resolve().parents[1]


def test_bundle_pack(tmp_path, capsys):
    """``ldmonai bundle pack`` bakes settings into every config that defines them and installs weights."""
    import json as _json

    from ldmonai.cli import main as cli

    bundle = ROOT / "bundles" / "ldseg"
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not checked here")
    source = (bundle / "configs" / "inference.json").read_text()
    dest = tmp_path / "ldseg_3d"
    assert cli(["bundle", "pack", str(bundle), str(dest), "--set", "spatial_dims=3", "--weights", str(weights)]) == 0
    for name in ("train.json", "inference.json", "evaluate.json"):
        config = _json.loads((dest / "configs" / name).read_text())
        if "spatial_dims" in _json.loads((bundle / "configs" / name).read_text()):
            assert config["spatial_dims"] == 3, name
    meta = _json.loads((dest / "configs" / "metadata.json").read_text())
    assert len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"]) == 3
    assert (dest / "models" / "model.pt").read_bytes() == b"not checked here"
    assert (bundle / "configs" / "inference.json").read_text() == source  # source untouched
    capsys.readouterr()
    assert cli(["bundle", "pack", str(bundle), str(dest), "--set", "spatial_dimz=3", "--overwrite"]) == 2
    assert "no config in the bundle defines ['spatial_dimz']" in capsys.readouterr().err
    assert cli(["bundle", "pack", str(bundle), str(dest)]) == 2
    assert "destination exists" in capsys.readouterr().err
    assert (dest / "models" / "model.pt").is_file()  # a refused pack leaves the old copy alone


def test_data_phantoms_writes_the_synthrad_layout(tmp_path, capsys):
    """The command GDM's models/large_files.yml tells users to run."""
    from ldmonai.cli import main as cli

    assert cli(["data", "phantoms", str(tmp_path), "--cases", "3", "--size", "24", "--quiet"]) == 0
    cases = sorted(p.name for p in (tmp_path / "Task1" / "HN").iterdir())
    assert len(cases) == 3 and all((tmp_path / "Task1" / "HN" / c / f).is_file() for c in cases
                                   for f in ("mr.mha", "ct.mha", "mask.mha"))
    assert "phantoms, not patient data" in capsys.readouterr().out


def test_data_slice_sets_for_ld(tmp_path, capsys):
    import json as _json

    from ldmonai.cli import main as cli

    assert cli(["data", "natural", str(tmp_path / "natural"), "--images", "6", "--size", "16"]) == 0
    train = _json.loads((tmp_path / "natural" / "datalist.json").read_text())["training"]
    assert train and all(e["prompt"].startswith("a photo of ") and (tmp_path / "natural" / e["image"]).is_file()
                         for e in train)
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    code = cli(["data", "brain-slices", str(tmp_path / "brain"), "--slices", "4", "--size", "16",
                "--volume", str(tmp_path / "broken.nii.gz")])
    err = capsys.readouterr().err
    assert code == 1 and "broken.nii.gz: cannot read volume" in err and "Traceback" not in err
    assert cli(["data", "aging-pairs", str(tmp_path / "pairs"), "--pairs", "4", "--size", "16", "--age-style", "binned"]) == 0
    pairs = _json.loads((tmp_path / "pairs" / "datalist.json").read_text())
    for entry in pairs["training"] + pairs["validation"]:
        assert (tmp_path / "pairs" / entry["source"]).is_file() and (tmp_path / "pairs" / entry["image"]).is_file()
        years = entry["target_age"] - entry["age"]
        level = "slightly" if years < 5 else "moderately" if years <= 10 else "significantly"
        assert entry["prompt"] == f"make this brain {level} older"


def test_a_bundle_without_trained_weights_falls_back_to_its_demo_weights(tmp_path, capsys):
    from ldmonai.demo import BUNDLES
    from ldmonai.engines import require_checkpoint
    from ldmonai.errors import LdmonaiError

    for bundle in ("ldseg", "gdm", "ld_slice_generator"):
        missing = BUNDLES / bundle / "models" / "model.pt"
        assert not missing.exists(), f"{missing} must not be committed: model.pt is what a user trains"
        assert require_checkpoint(missing) == str(missing.with_name("demo_tiny.pt"))
        notice = capsys.readouterr().err
        assert notice.count("\n") == 1 and "using the shipped tiny demo weights" in notice and "--ckpt_path" in notice
    # a working --bundle_root of the user's own: the bundle's shipped weights, with the same notice
    assert require_checkpoint(tmp_path / "models" / "model.pt", "gdm") == str(BUNDLES / "gdm" / "models" / "demo_tiny.pt")
    assert "using the shipped tiny demo weights" in capsys.readouterr().err
    with pytest.raises(LdmonaiError, match="no trained weights"):  # an explicit file that is missing never falls back
        require_checkpoint(tmp_path / "trained.pt", "gdm")
    with pytest.raises(LdmonaiError, match="no trained weights"):  # nowhere to fall back to
        require_checkpoint(tmp_path / "models" / "model.pt")


def test_converting_never_imports_torch(tmp_path):
    """A convert run starts in a fraction of a second: importing torch and MONAI would add seconds
    per process (and per worker), and pydicom plus nibabel 0.3 s, as long as dcm2niix's whole run.
    Plain files must convert without any of them (pydicom only reads the rare encodings)."""
    src = Path(importlib.util.find_spec("pydicom").submodule_search_locations[0]) / "data" / "test_files"
    code = ("import sys; from ldmonai.cli import main; "
            f"rc = main(['prep', 'convert', {str(src / 'CT_small.dcm')!r}, {str(tmp_path / 'out')!r}, '--quiet']); "
            "heavy = sorted(m for m in ('torch', 'monai', 'SimpleITK', 'itk', 'pydicom', 'nibabel') if m in sys.modules); "
            "print('heavy:', heavy); sys.exit(rc or (1 if heavy else 0))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert list((tmp_path / "out").rglob("*.nii.gz"))
    # the ITK pipelines need SimpleITK, but not torch either
    code = "import sys, ldmonai.prep.pipeline; sys.exit(1 if {'torch', 'monai'} & set(sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_overview_says_which_stage_left_no_output(tmp_path, monkeypatch):
    """A failed stage keeps its row in demo_out/overview.png, naming the output it lacks, instead of vanishing."""
    from ldmonai import demo_overview

    said = []
    real = demo_overview._missing
    monkeypatch.setattr(demo_overview, "_missing", lambda axes, what: (said.append(what), real(axes, what)))
    assert demo_overview.write_overview(tmp_path).is_file()
    assert said == ["demo_out/nifti/*/*.nii.gz", "demo_out/prep/*/*_mask.nii.gz", "demo_out/ldseg/inference/*_seg.nii.gz",
                    "demo_out/gdm/inference/*_sct.nii.gz", "demo_out/ld_slice_generator/generated/*.png"]
