"""The converter's own readers and writer agree with the libraries they stand in for.

The element walker (``elements``), the CSA2 parser (``csa``) and the NIfTI-1 writer
(``nifti_writer``) exist only because importing pydicom and nibabel cost more than dcm2niix's
whole run (docs/benchmarks.md). Each is checked here against that library on real files:
the dcm_qa_nih scanner exports, every sample that ships inside the pydicom wheel, nibabel's
Siemens mosaic, and generated series.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK as sitk
from pydicom.datadict import dictionary_VR, tag_for_keyword

from ldmonai.errors import LdmonaiError
from ldmonai.prep.dicom import header as header_mod
from ldmonai.prep.dicom.csa import parse_csa2, read_csa
from ldmonai.prep.dicom.elements import KEYWORDS, read_elements
from ldmonai.prep.dicom.header import read_header, read_values
from ldmonai.prep.dicom.nifti_writer import HEADER, write_nifti1
from ldmonai.prep.dicom.sidecar import SIDECAR_KEYS
from tests.conftest import shared_path
from tests.dicom_factory import make_volume, write_enhanced, write_series

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
NIBABEL_MOSAIC = Path(nib.__file__).parent / "nicom" / "tests" / "data" / "0.dcm"


def _outcome(func):
    try:
        return "ok", func()
    except LdmonaiError as exc:
        return "error", exc.to_dict()["reason"]


def _both_ways(monkeypatch, func):
    """``func()`` with the element walker, then with pydicom alone; and whether the walker read it."""
    walked = []
    real_walk = header_mod._walk

    def spy(*args):
        out = real_walk(*args)
        walked.append(out is not None)
        return out

    with monkeypatch.context() as m:
        m.setattr(header_mod, "_walk", spy)
        fast = _outcome(func)
    with monkeypatch.context() as m:
        m.setattr(header_mod, "_walk", lambda *args: None)
        slow = _outcome(func)
    return fast, slow, any(walked)


def _sample_files() -> list[Path]:
    files = sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file() and p.stat().st_size < 20_000_000)
    return files + [NIBABEL_MOSAIC]


def test_keyword_table_matches_the_dicom_dictionary():
    for keyword, (tag, vr) in KEYWORDS.items():
        assert tag_for_keyword(keyword) == tag, keyword
        assert dictionary_VR(tag) == vr, keyword


def test_headers_equal_pydicom_on_every_packaged_sample(monkeypatch):
    """Every file in the pydicom wheel (odd encodings, damaged files, DICOMDIRs, reports)
    gives the same summary, or the same error, whichever reader takes it."""
    walked = 0
    for path in _sample_files():
        fast, slow, used = _both_ways(monkeypatch, lambda: read_header(str(path)))
        assert fast == slow, path.name
        walked += used
    assert walked >= 60, f"the walker read only {walked} files; it should take the common encodings"


def test_headers_and_sidecar_values_equal_pydicom_on_scanner_exports(monkeypatch):
    root = shared_path("dcm_qa_nih", "In")
    files = sorted(p for p in root.rglob("*.dcm"))
    assert len(files) > 600
    for path in files[::7]:
        fast, slow, used = _both_ways(monkeypatch, lambda: read_header(str(path)))
        assert used and fast == slow, path
        fast, slow, used = _both_ways(monkeypatch, lambda: read_values(str(path), SIDECAR_KEYS))
        assert used and fast == slow, path


def test_generated_series_read_the_same_both_ways(monkeypatch, tmp_path):
    data = make_volume((3, 4, 5), nt=2)
    files = write_series(tmp_path / "classic", data, orientation=(0.8, 0.6, 0, -0.6, 0.8, 0),
                         tags={"SeriesDescription": "Müller \\ T1", "SpecificCharacterSet": "ISO_IR 100"})
    files.append(write_enhanced(tmp_path / "enhanced.dcm", data))
    for path in files:
        fast, slow, _ = _both_ways(monkeypatch, lambda: read_header(str(path)))
        assert fast == slow, path
    assert read_header(str(files[0])).tags["SeriesDescription"] == ("Müller", " T1")
    utf8 = write_series(tmp_path / "utf8", data[:, :1], tags={"SeriesDescription": "Žilina 脳",
                                                               "SpecificCharacterSet": "ISO_IR 192"})[0]
    fast, slow, used = _both_ways(monkeypatch, lambda: read_values(str(utf8), ["SeriesDescription"]))
    assert used and fast == slow == ("ok", {"SeriesDescription": "Žilina 脳"})


def test_damaged_copies_never_crash_and_read_the_same_both_ways(monkeypatch, tmp_path):
    """Seeded byte damage in the header region, and truncation: no copy raises anything but a
    clear LdmonaiError, and where both readers find an image they find the same one."""
    rng = np.random.default_rng(7)
    sources = [PYDICOM_FILES / "CT_small.dcm", NIBABEL_MOSAIC, PYDICOM_FILES / "MR_small_implicit.dcm"]
    agreed = 0
    for src in sources:
        raw = src.read_bytes()
        for n in range(40):
            damaged = bytearray(raw)
            for pos in rng.integers(132, min(len(raw), 12_000), size=rng.integers(1, 5)):
                damaged[pos] = rng.integers(0, 256)
            if n % 3 == 0:
                damaged = damaged[: rng.integers(132, len(damaged))]
            path = tmp_path / f"{src.stem}_{n}.dcm"
            path.write_bytes(bytes(damaged))
            fast, slow, _ = _both_ways(monkeypatch, lambda: read_header(str(path)))
            # Damage can make one reader see no image where the other still finds one (the
            # walker trusts the meta group length, pydicom the group number); both are clean.
            if fast[0] == slow[0] == "ok" and fast[1] is not None and slow[1] is not None:
                assert fast[1] == slow[1], path.name
                agreed += 1
    assert agreed > 40


def test_the_walker_keeps_top_level_elements_only(tmp_path):
    """An ImagePositionPatient inside a sequence must not stand in for the image's own."""
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    nested = pydicom.Dataset()
    nested.ImagePositionPatient = [1, 2, 3]
    del ds.ImagePositionPatient
    ds.ReferencedImageSequence = pydicom.Sequence([nested])
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    with open(tmp_path / "x.dcm", "rb") as fh:
        elements = read_elements(fh, frozenset({KEYWORDS["ImagePositionPatient"][0]}))
    assert KEYWORDS["ImagePositionPatient"][0] not in elements.raw
    assert elements.pixel is not None and elements.pixel[0] == 0x7FE00010


def _nibabel_csa(path: Path) -> dict:
    from nibabel.nicom import csareader

    found = csareader.get_csa_header(pydicom.dcmread(path, stop_before_pixels=True), "image")
    for tag in found["tags"].values():  # nibabel gives b"" for an empty string item
        tag["items"] = ["" if item == b"" else item for item in tag["items"]]
    return found


def test_csa_header_equals_nibabel():
    files = [NIBABEL_MOSAIC]
    root = shared_path("dcm_qa_nih", "In", "20180918Si")
    files += sorted(root.rglob("*.dcm"))
    for path in files:
        ours = read_csa(str(path))
        assert ours and ours == _nibabel_csa(path), path
    assert ours["tags"]["NumberOfImagesInMosaic"]["items"]
    with pytest.raises(ValueError):
        parse_csa2(b"SV10\x04\x03\x02\x01" + (5000).to_bytes(4, "little") + b"\x4d\0\0\0")


def _nibabel_file(path, data, affine, rgb=False, tr=None, slope=1.0, intercept=0.0, descrip=b""):
    """What the converter wrote with nibabel before it had its own writer."""
    if rgb:
        data = np.ascontiguousarray(data).view(np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]))[..., 0]
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if data.ndim == 4 and tr is not None:
        zooms = list(img.header.get_zooms())
        zooms[3] = tr
        img.header.set_zooms(zooms)
    if (slope, intercept) != (1.0, 0.0):
        img.header.set_slope_inter(slope, intercept)
    img.header["descrip"] = descrip
    nib.save(img, str(path))


def _oblique(left_handed: bool) -> np.ndarray:
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    affine = np.eye(4)
    affine[:3, :3] = rot * [0.9, 1.1, 2.5]
    affine[:3, 3] = [-100.5, 20.25, 33.0]
    if left_handed:
        affine[:, 0] *= -1
    return affine


@pytest.mark.parametrize("case", ["int16", "uint16_4d_tr", "float32_scaled", "rgb", "left_handed_gz",
                                  "flipped_axes"])
def test_nifti_writer_matches_nibabel_byte_for_byte(tmp_path, case):
    rng = np.random.default_rng(0)
    affine, kwargs = _oblique(left_handed=False), {}
    data = rng.integers(-500, 500, (5, 6, 4)).astype(np.int16)
    name = "x.nii"
    if case == "uint16_4d_tr":
        data, kwargs = rng.integers(0, 4000, (5, 6, 4, 3)).astype(np.uint16), {"tr": 2.5}
    elif case == "float32_scaled":
        data, kwargs = rng.normal(size=(5, 6, 4)).astype(np.float32), {"slope": 2.0, "intercept": -1024.0}
    elif case == "rgb":
        data, kwargs = rng.integers(0, 255, (5, 6, 4, 3)).astype(np.uint8), {"rgb": True}
    elif case == "left_handed_gz":
        affine, name = _oblique(left_handed=True), "x.nii.gz"
    elif case == "flipped_axes":
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.array(
            [[0, 0, 3.0, 1], [0.5, 0, 0, 2], [0, -0.7, 0, 3], [0, 0, 0, 1]])
    kwargs["descrip"] = b"TE=30;Time=101010.000000"
    ours, theirs = tmp_path / ("ours_" + name), tmp_path / ("nib_" + name)
    write_nifti1(ours, data, affine, **kwargs)
    _nibabel_file(theirs, data, affine, **kwargs)
    read = (lambda p: gzip.decompress(p.read_bytes())) if name.endswith(".gz") else Path.read_bytes
    a, b = read(ours), read(theirs)
    hdr_ours = np.frombuffer(a[:348], HEADER)
    hdr_nib = np.frombuffer(b[:348], HEADER)
    for field in hdr_ours.dtype.names:  # quaternions may differ in the last float bit
        if field.startswith("quatern"):
            np.testing.assert_allclose(hdr_ours[field], hdr_nib[field], atol=1e-6, err_msg=field)
        else:
            assert np.array_equal(hdr_ours[field], hdr_nib[field], equal_nan=hdr_ours[field].dtype.kind == "f"), field
    assert a[348:] == b[348:]
    if kwargs.get("rgb"):  # a colour volume stacked as a wider integer type still writes 8-bit channels
        write_nifti1(tmp_path / "wide.nii", data.astype(np.int16), affine, **kwargs)
        assert (tmp_path / "wide.nii").read_bytes() == a
    loaded = nib.load(ours)
    np.testing.assert_allclose(loaded.get_qform(), nib.load(theirs).get_qform(), atol=1e-5)
    np.testing.assert_allclose(loaded.get_sform(), affine, atol=1e-5)
    if not kwargs.get("rgb"):
        image = sitk.ReadImage(str(ours))
        lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]
        np.testing.assert_allclose(image.GetOrigin()[:3], lps, atol=1e-4)

