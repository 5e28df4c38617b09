"""The ``ldmonai`` command. Subcommands are thin: they parse arguments and call the library."""

from __future__ import annotations

import argparse
import os
import sys

from ldmonai import __version__
from ldmonai.errors import EXIT_CASES_FAILED, EXIT_USAGE, LdmonaiError, UsageError

EXAMPLES_CONVERT = """examples:
  ldmonai prep convert /data/dicom /data/nifti
  ldmonai prep convert /data/dicom /data/nifti --workers 2 --no-compress
  ldmonai prep convert /data/dicom /data/nifti --template "{PatientID}/{StudyDate}/{SeriesNumber}_{ProtocolName}"
  ldmonai prep convert /data/dicom /data/nifti --template "%p_%s" --dcm2niix-args "-m y -ba n"
  ldmonai prep convert /data/dicom /data/nifti --scheduler local --workers 4
  ldmonai prep convert /data/dicom /data/nifti --scheduler tcp://head-node:8786

Every series is converted by dcm2niix (the pinned wheel's binary); each call gets whole series.
Re-running the same command resumes: series whose outputs exist are skipped.
Exit status: 0 all converted, 1 some series failed (see conversion_report.json), 2 bad arguments.
"""


EXIT_STATUS = """exit status (every subcommand):
  0  everything done
  1  the command ran, but some cases failed (each is listed with its reason and fix in the report)
  2  bad arguments or paths: a missing input, an unreadable config, an unknown option
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line instead of usage plus error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def _get_formatter(self):
        # argparse's formatter imports shutil (with bz2 and lzma, 1.6 ms) only to read the terminal
        # width; the same width from os, as shutil.get_terminal_size computes it
        try:
            columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (ValueError, OSError, AttributeError):
            columns = 80
        return self.formatter_class(prog=self.prog, width=columns - 2)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a folder tree of DICOM series to NIfTI + BIDS JSON",
                       description="Convert every DICOM series below IN_DIR to NIfTI with a BIDS JSON sidecar. "
                                   "dcm2niix converts each series (its files are byte for byte those of a dcm2niix "
                                   "call with the same options); ldmonai adds series-parallel workers, Dask, resume, "
                                   "names from DICOM tags and a per-series report.",
                       epilog=EXAMPLES_CONVERT, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("in_dir", metavar="IN_DIR", help="folder of DICOM files (any suffix, DICOMDIR trees too)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created if missing)")
    p.add_argument("--template", default=None,
                   help="output name: {Keyword} fields from DICOM tags and dcm2niix's %%-fields "
                        "(default: {PatientID}/{SeriesNumber}_{SeriesDescription})")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="series converted in parallel: local processes, or LocalCluster workers (default: 1)")
    p.add_argument("--scheduler", default=None,
                   help="run on dask.distributed: 'local' (a LocalCluster of --workers processes) or a scheduler "
                        "address such as tcp://host:8786")
    p.add_argument("--no-compress", action="store_true", help="write .nii instead of .nii.gz")
    p.add_argument("--ignore-derived", action="store_true",
                   help="skip derived, localizer and 2D images (dcm2niix -i y)")
    p.add_argument("--dcm2niix-args", default="",
                   help="further dcm2niix options for every series, e.g. \"-m y -ba n\"")
    p.add_argument("--timeout", type=float, default=None, help="seconds one series may take (default: no limit)")
    p.add_argument("--adjacent", action="store_true",
                   help="assume every series lies in one folder (dcm2niix -a y): one call per folder, no header "
                        "pass over every file; faster on large trees")
    p.add_argument("--overwrite", action="store_true", help="convert again even where outputs exist")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_convert)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run_convert(args) -> int:
    from ldmonai.prep.dicom import DEFAULT_TEMPLATE, convert_tree

    import shlex

    report = convert_tree(args.in_dir, args.out_dir, template=args.template or DEFAULT_TEMPLATE,
                          workers=args.workers, compress=not args.no_compress, overwrite=args.overwrite,
                          progress=False if args.quiet else None, ignore_derived=args.ignore_derived,
                          engine_args=shlex.split(args.dcm2niix_args), scheduler=args.scheduler,
                          timeout=args.timeout, adjacent=args.adjacent)
    print(report.summary())
    return 0 if report.ok else 1


EXAMPLES_PIPELINE = """examples:
  ldmonai prep run configs/prep/brain_t1.yaml /data/nifti /data/prepped --workers 2
  ldmonai prep run configs/prep/brain_t1.yaml datalist.json /data/prepped --participants participants.tsv
  ldmonai prep skullstrip /data/nifti /data/stripped
  ldmonai prep register /data/nifti /data/mni --template mni152 --kind bspline
  ldmonai prep register moving.nii.gz /data/out --template fixed.nii.gz --labels atlas_labels.nii.gz
  ldmonai prep n4 /data/nifti /data/n4
  ldmonai prep resample /data/nifti /data/iso --spacing 1 1 1
  ldmonai prep slices /data/prepped_volumes /data/slices --axis axial --participants participants.tsv

IN is an image, a folder (searched recursively) or a datalist JSON. Every case gets OUT/<case>/;
re-running the same command resumes (finished cases are skipped); one bad case never stops the batch.
Exit status: 0 all cases done, 1 some failed (see OUT/prep_report.json), 2 bad arguments.
"""


def _run_pipeline_args(args, steps) -> int:
    from ldmonai.prep.pipeline import run_pipeline

    report = run_pipeline(steps, args.input, args.out_dir, workers=args.workers, resume=not args.overwrite,
                          scheduler=args.scheduler,
                          participants=getattr(args, "participants", None), progress=False if args.quiet else None)
    print(report.summary())
    return 0 if report.ok else 1


def _add_batch_args(p, participants: bool = False) -> None:
    p.add_argument("input", metavar="IN", help="image file, folder of images, or datalist JSON")
    p.add_argument("out_dir", metavar="OUT", help="output folder (one sub-folder per case)")
    p.add_argument("--workers", type=_positive_int, default=1, help="cases in parallel (default: 1)")
    p.add_argument("--scheduler", default=None,
                   help="run cases on dask.distributed: 'local' (a LocalCluster of --workers processes) or a "
                        "scheduler address such as tcp://host:8786")
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already finished")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if participants:
        p.add_argument("--participants", help="BIDS participants.tsv or CSV with age, sex, diagnosis, ...")


def _add_pipeline(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("run", help="run a pipeline config (YAML/JSON) over a folder or datalist",
                       description="Run the steps of a pipeline config over every case.", epilog=EXAMPLES_PIPELINE,
                       formatter_class=fmt)
    p.add_argument("config", metavar="CONFIG", help="pipeline YAML/JSON, e.g. configs/prep/brain_t1.yaml")
    _add_batch_args(p, participants=True)
    p.set_defaults(func=lambda a: _run_pipeline_args(a, a.config))

    p = sub.add_parser("skullstrip", help="skull-stripping of T1 heads (deepbet or atlas)",
                       description="deepbet's network when installed (--method auto, the default), or: register the "
                                   "ROBEX head atlas (or --atlas) to each T1 after cutting the neck, carry its brain mask "
                                   "over and clean it with ITK morphology; then trim the CSF layer over the brain. "
                                   "Writes <case>_image (stripped), <case>_mask and <case>_mask.png.",
                       epilog=EXAMPLES_PIPELINE, formatter_class=fmt)
    _add_batch_args(p)
    p.add_argument("--atlas", default="robex", help="'robex' or a head image with skull (default: robex)")
    p.add_argument("--atlas-mask", help="brain mask of a custom --atlas")
    p.add_argument("--refine", choices=("csf", "none", "levelset"), default="csf",
                   help="the boundary step: csf trims the CSF layer over the brain (either method), none keeps the "
                        "method's mask, levelset refines an atlas fit by intensity (default: csf)")
    p.add_argument("--method", choices=("atlas", "deepbet", "auto"), default="auto",
                   help="atlas registration, the learned deepbet backend (pip install \"ldmonai[deepbet]\"), or auto: "
                        "deepbet when installed, else atlas (default: auto)")
    p.set_defaults(func=lambda a: _run_pipeline_args(a, [
        {"step": "skullstrip", "atlas": a.atlas, "atlas_mask": a.atlas_mask, "refine": a.refine, "method": a.method}]))

    p = sub.add_parser("register", help="rigid, affine or B-spline registration to a template",
                       description="Register each image to a template and resample it (and --labels, by nearest "
                                   "neighbour) onto the template grid; writes the ITK transform (.tfm or .h5).",
                       epilog=EXAMPLES_PIPELINE, formatter_class=fmt)
    _add_batch_args(p)
    p.add_argument("--template", default="mni152", help="'mni152', 'robex' or a NIfTI path (default: mni152)")
    p.add_argument("--kind", choices=("rigid", "affine", "bspline"), default="affine", help="default: affine")
    p.add_argument("--metric", choices=("ncc", "mi", "msd"), default="ncc",
                   help="ncc: same contrast, mi: different contrasts (default: ncc)")
    p.add_argument("--labels", help="label map on the (single) input image's grid, propagated with it")
    p.set_defaults(func=_run_register)

    p = sub.add_parser("n4", help="N4 bias field correction", description="N4 bias field correction.",
                       epilog=EXAMPLES_PIPELINE, formatter_class=fmt)
    _add_batch_args(p)
    p.set_defaults(func=lambda a: _run_pipeline_args(a, [{"step": "n4", "save_field": True}]))

    p = sub.add_parser("resample", help="reorient to RAS and resample to a spacing",
                       description="Reorient to RAS (no interpolation) and resample to --spacing.",
                       epilog=EXAMPLES_PIPELINE, formatter_class=fmt)
    _add_batch_args(p)
    p.add_argument("--spacing", type=float, nargs="+", default=[1.0], help="mm, one value or one per axis (default: 1)")
    p.set_defaults(func=lambda a: _run_pipeline_args(a, [{"step": "reorient"}, {"step": "resample",
                                                         "spacing": a.spacing[0] if len(a.spacing) == 1 else a.spacing}]))

    p = sub.add_parser("slices", help="2D slices (PNG + NIfTI) with a participants index",
                       description="Cut registered, stripped volumes into 2D slices for the LD generator and write "
                                   "slices_index.csv/json with the participants' metadata.",
                       epilog=EXAMPLES_PIPELINE, formatter_class=fmt)
    _add_batch_args(p, participants=True)
    p.add_argument("--axis", choices=("axial", "coronal", "sagittal"), default="axial", help="default: axial")
    p.add_argument("--every", type=_positive_int, default=1, help="keep every n-th slice (default: 1)")
    p.add_argument("--min-foreground", type=float, default=0.05,
                   help="drop slices with less non-zero area than this fraction (default: 0.05)")
    p.set_defaults(func=lambda a: _run_pipeline_args(a, [{"step": "slices", "axis": a.axis, "every": a.every,
                                                          "min_foreground": a.min_foreground}]))


def _run_register(args) -> int:
    steps = [{"step": "register", "template": args.template, "kind": args.kind, "metric": args.metric}]
    if not args.labels:
        return _run_pipeline_args(args, steps)
    from pathlib import Path

    if not Path(args.input).is_file() or args.input.endswith(".json"):
        raise UsageError("--labels goes with a single image", args.input,
                         "for many images, list them with a 'label' key in a datalist JSON")
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        datalist = Path(tmp) / "datalist.json"
        datalist.write_text(json.dumps({"test": [{"image": str(Path(args.input).resolve()),
                                                  "label": str(Path(args.labels).resolve())}]}))
        args.input = str(datalist)
        return _run_pipeline_args(args, steps)


def _run_tissue(args) -> int:
    from ldmonai.data import make_tissue_dataset

    path = make_tissue_dataset(args.out_dir, spatial_dims=args.dims, num_train=args.train, num_val=args.val,
                               num_test=args.test, size=args.size, seed=args.seed, progress=not args.quiet)
    print(f"wrote {args.train + args.val + args.test} cases; datalist: {path}")
    return 0


def _run_phantoms(args) -> int:
    from ldmonai.data import make_mr_ct_phantoms

    make_mr_ct_phantoms(args.out_dir, num_cases=args.cases, size=args.size, seed=args.seed, progress=not args.quiet)
    print(f"wrote {args.cases} MR/CT phantom pairs under {args.out_dir}/Task1/HN (phantoms, not patient data)")
    return 0


def _run_natural(args) -> int:
    from ldmonai.data import make_natural_slices

    path = make_natural_slices(args.out_dir, num_images=args.images, size=args.size, seed=args.seed)
    print(f"wrote {args.images} natural-photo crops; datalist: {path}")
    return 0


def _run_brain_slices(args) -> int:
    from ldmonai.data import make_brain_slices

    path = make_brain_slices(args.out_dir, num_slices=args.slices, size=args.size, seed=args.seed,
                             volumes=args.volume, images=args.image, prompt=args.prompt)
    print(f"wrote brain slices; datalist: {path}")
    return 0


def _run_aging_pairs(args) -> int:
    from ldmonai.data import make_aging_pairs

    path = make_aging_pairs(args.out_dir, num_pairs=args.pairs, size=args.size, seed=args.seed, age_style=args.age_style)
    print(f"wrote {args.pairs} simulated ageing pairs (not longitudinal scans); datalist: {path}")
    return 0


def _command_group(top, name: str, help: str, description: str, dest: str):
    """A subcommand that only holds further subcommands, one of which is required."""
    group = top.add_parser(name, help=help, description=description)
    sub = group.add_subparsers(dest=dest, metavar=dest.upper(), parser_class=_Parser)
    sub.required = True
    return sub


def _add_data(top) -> None:
    data_sub = _command_group(top, "data", "sample datasets that install from the package registry",
                              "Make sample datasets.", "dataset")
    p = _dataset_parser(
        data_sub, "tissue", "MNI152 brain tissue segmentation cases (background, CSF, GM, WM)",
        "Write augmented copies of the MNI152 2009 template (nilearn wheel) with tissue labels, "
        "and a Decathlon-style datalist.json with a fixed train/validation/test split.",
        "examples:\n  ldmonai data tissue data/tissue2d --dims 2 --size 64\n"
        "  ldmonai data tissue data/tissue3d --dims 3 --size 32 --train 16 --val 4\n"
        "then: python -m monai.bundle run --config_file bundles/ldseg/configs/train.json "
        "--bundle_root bundles/ldseg --dataset_dir data/tissue2d",
        ("--train", 24, "training cases"), 64, "grid size per axis")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2: axial slices, 3: volumes (default: 2)")
    p.add_argument("--val", type=_positive_int, default=6, help="validation cases (default: 6)")
    p.add_argument("--test", type=int, default=2, help="test cases (default: 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_tissue)
    p = _dataset_parser(
        data_sub, "phantoms", "paired MR/CT head phantoms in the SynthRAD2025 layout (GDM's sample data)",
        "Write paired MR and CT head phantoms with body masks (ROBEX head template, tissue classes "
        "turned into MR intensities and CT numbers) as Task1/HN/<case>/{mr,ct,mask}.mha. They are "
        "phantoms, not patient data.",
        "examples:\n  ldmonai data phantoms data --cases 12 --size 48\n"
        "then: python -m monai.bundle run --config_file bundles/gdm/configs/train.json "
        "--bundle_root bundles/gdm --dataset_dir data/Task1",
        ("--cases", 12, "number of cases"), 48, "grid size per axis")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_phantoms)
    p = _dataset_parser(
        data_sub, "natural", "grey crops of scikit-image's sample photos with captions (LD's pretraining data)",
        "Write random grey-level crops of the photos in the scikit-image wheel, captioned "
        "'a photo of <subject>', and a datalist.json: the general-domain data of LD's pretraining.",
        "examples:\n  ldmonai data natural data/natural --images 256 --size 32\n"
        "then: python -m monai.bundle run --config_file \"['bundles/ld_slice_generator/configs/train.json',"
        "'bundles/ld_slice_generator/configs/pretrain.json']\" --bundle_root bundles/ld_slice_generator",
        ("--images", 256, "number of crops"), 32, "crop size in pixels")
    p.set_defaults(func=_run_natural)
    p = _dataset_parser(
        data_sub, "brain-slices", "axial brain slices of the MNI152 template (and your volumes) with prompts",
        "Write axial slices of the MNI152 2009 T1 template (nilearn wheel) with small random affine "
        "changes, plus central slices of any --volume and any --image, with one prompt, and a datalist.json.",
        "examples:\n  ldmonai data brain-slices data/brain_slices --slices 64 --size 32\n"
        "  ldmonai data brain-slices data/brain --volume colin27_t1.nii.gz --image slice1.png --size 64",
        ("--slices", 64, "template slices"), 32, "slice size in pixels")
    p.add_argument("--volume", action="append", default=[], help="a 3D NIfTI whose central axial slices are added (repeatable)")
    p.add_argument("--image", action="append", default=[], help="a 2D image added as it is (repeatable)")
    p.add_argument("--prompt", default="a brain mri of a brain", help="the prompt of every slice")
    p.set_defaults(func=_run_brain_slices)
    p = _dataset_parser(
        data_sub, "aging-pairs", "MNI152 slice pairs before and after simulated atrophy, with edit instructions",
        "Write (source, target) slice pairs, the target after a simulated atrophy (widened central "
        "structures), with instructions that carry the age difference, such as 'make this brain seven "
        "years older' (--age-style word), 'make this brain 7 years older' (numerical) or 'make this "
        "brain moderately older' (binned: slight < 5 years, moderate 5 to 10, significant > 10): "
        "InstructPix2Pix training data standing in for longitudinal scans.",
        "examples:\n  ldmonai data aging-pairs data/aging_pairs --pairs 64 --size 32\n"
        "then: python -m monai.bundle run --config_file \"['bundles/ld_slice_generator/configs/train.json',"
        "'bundles/ld_slice_generator/configs/instruct_pix2pix.json']\" --bundle_root bundles/ld_slice_generator",
        ("--pairs", 64, "number of pairs"), 32, "slice size in pixels")
    p.add_argument("--age-style", choices=("binned", "word", "numerical"), default="word",
                   help="how instructions state the age difference (default: word)")
    p.set_defaults(func=_run_aging_pairs)


def _dataset_parser(data_sub, name: str, help: str, description: str, epilog: str, count: tuple[str, int, str],
                    size: int, size_help: str):
    """A ``data`` subcommand with what every sample dataset takes: OUT_DIR, a count, --size, --seed."""
    p = data_sub.add_parser(name, help=help, description=description, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    flag, default, what = count
    p.add_argument(flag, type=_positive_int, default=default, help=f"{what} (default: {default})")
    p.add_argument("--size", type=_positive_int, default=size, help=f"{size_help} (default: {size})")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    return p


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _run_pack(args) -> int:
    from ldmonai.bundle import pack_bundle

    dest = pack_bundle(args.source, args.dest, dict(args.set), weights=args.weights, overwrite=args.overwrite)
    print(f"packed bundle: {dest}")
    return 0


def _add_bundle(top) -> None:
    sub = _command_group(top, "bundle", "pack bundles for MONAI Label and the model zoo",
                         "Tools for the MONAI bundles under bundles/.", "action")
    p = sub.add_parser(
        "pack", help="a self-contained bundle copy with settings baked in and trained weights in models/",
        description="Copy a bundle, write KEY=VALUE settings into every config that defines them, and install "
                    "trained weights as models/model.pt, so that tools which read inference.json without "
                    "overrides (MONAI Label's monaibundle app) run it as it was trained.",
        epilog="examples:\n  ldmonai bundle pack bundles/ldseg apps/monaibundle/model/ldseg_3d "
               "--set spatial_dims=3 --weights runs3d/models/model.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="BUNDLE", help="bundle folder, e.g. bundles/ldseg")
    p.add_argument("dest", metavar="DEST", help="new bundle folder")
    p.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="top-level config setting (JSON values: 3, true, [1,2]); repeatable")
    p.add_argument("--weights", help="state dict to install as models/model.pt")
    p.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    p.set_defaults(func=_run_pack)


def _run_score(args) -> int:
    from ldmonai.gdm.score import score_folder

    report = score_folder(args.pred_dir, args.gt_dir, args.out, require_all=args.all)
    print(report.text())
    print(f"scores: {(args.out or args.pred_dir)}/scores.csv and scores.json")
    return 0 if report.cases and not report.failed else 1


def _add_gdm(top) -> None:
    sub = _command_group(top, "gdm", "GDM tools that run without the network",
                         "Tools for GDM's synthetic CTs.", "action")
    p = sub.add_parser(
        "score", help="score a folder of synthetic CTs with the official SynthRAD2025 metrics",
        description="MAE, PSNR and MS-SSIM of every case, as the SynthRAD2025 evaluation computes them, for "
                    "predictions that already exist (no network is run).",
        epilog="examples:\n  ldmonai gdm score predictions/ ground_truth/      # ground_truth/{ct,mask}/<id>.mha\n"
               "  ldmonai gdm score runs/gdm/eval data/Task1          # <id>_sct files and the data layout\n\n"
               "Exit status: 0 every prediction scored, 1 some failed (or none found), 2 bad paths.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred_dir", metavar="PRED_DIR", help="predictions <id>.mha (or <id>_sct.mha/.nii.gz)")
    p.add_argument("gt_dir", metavar="GT_DIR", help="ct/<id>.mha and mask/<id>.mha, or <id>/ct.mha and mask.mha")
    p.add_argument("--out", help="folder for scores.csv and scores.json (default: PRED_DIR)")
    p.add_argument("--all", action="store_true",
                   help="every ground-truth case must have a prediction (a challenge submission); else missing ones are listed")
    p.set_defaults(func=_run_score)


def _run_demo(args) -> int:
    from ldmonai.demo import run_demo

    if args.export_weights and not args.train:
        args.demo_parser.error("--export-weights needs --train (it exports the weights that run trains)")
    return run_demo(args.out_dir, train=args.train, export=args.export_weights)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; for ``argv`` that starts with ``prep convert``, only that branch
    (building every subcommand costs 10 ms, a tenth of converting dcm_qa_nih)."""
    only_convert = argv is not None and argv[:2] == ["prep", "convert"]
    parser = _Parser(prog="ldmonai", description="Generative medical imaging with MONAI bundles: "
                     "Latent Drifting, LDSeg and GDM, plus the preprocessing that feeds them.",
                     epilog="examples:\n  ldmonai prep convert /data/dicom /data/nifti --workers 2\n"
                            "  ldmonai prep run configs/prep/brain_t1.yaml /data/nifti /data/prepped\n"
                            "  ldmonai demo --out-dir demo_out\n\n" + EXIT_STATUS,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ldmonai {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    top.required = True

    prep = top.add_parser("prep", help="preprocessing: DICOM conversion and ITK pipelines",
                          description="Preprocessing steps.", epilog=EXAMPLES_CONVERT + "\n" + EXAMPLES_PIPELINE,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    prep_sub = prep.add_subparsers(dest="step", metavar="STEP", parser_class=_Parser)
    prep_sub.required = True
    _add_convert(prep_sub)
    if only_convert:
        return parser
    _add_pipeline(prep_sub)

    _add_data(top)
    _add_bundle(top)
    _add_gdm(top)

    demo = top.add_parser("demo", help="run the main job on the embedded sample data",
                          description="Convert and preprocess the sample DICOM data that ships with the installed "
                                      "packages, run the LDSeg, GDM and LD bundles' inference with their shipped tiny "
                                      "weights, and print where the outputs are.",
                          epilog="examples:\n  ldmonai demo                    # shipped tiny weights, about a minute\n"
                                 "  ldmonai demo --train            # retrain the tiny presets first (about 9 minutes)\n"
                                 "  ldmonai demo --train --export-weights   # and replace bundles/*/models/demo_tiny.pt",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out-dir", default="demo_out", help="where outputs go (default: demo_out)")
    demo.add_argument("--train", action="store_true",
                      help="train each bundle's tiny preset with its train config instead of using the shipped weights")
    demo.add_argument("--export-weights", action="store_true",
                      help="with --train: copy the trained weights to bundles/<name>/models/demo_tiny.pt with a manifest")
    demo.set_defaults(func=_run_demo, demo_parser=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"ldmonai: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LdmonaiError as exc:
        print(f"ldmonai: error: {exc}", file=sys.stderr)
        return EXIT_CASES_FAILED
    except KeyboardInterrupt:
        print("ldmonai: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
