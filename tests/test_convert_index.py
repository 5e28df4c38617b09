"""The series index's fast element walker against pydicom, file by file.

The index (``ldmonai.prep.dicom.index``) reads SeriesInstanceUID and the name template's keywords
with a stdlib element walker and hands what it cannot read to pydicom. These tests read the same
files both ways: every sample in the pydicom wheel (odd encodings, damaged files, DICOMDIRs),
scanner exports, generated series with other character sets, and seeded damage.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
from pydicom.datadict import dictionary_VR, tag_for_keyword

from ldmonai.errors import LdmonaiError
from ldmonai.prep.dicom import index as index_mod
from ldmonai.prep.dicom.elements import KEYWORDS, read_elements
from ldmonai.prep.dicom.index import keyword_tags, read_index_tags
from tests.conftest import shared_path
from tests.dicom_factory import make_volume, write_enhanced, write_series

# What the default template and the index need, plus keywords that exercise every VR family.
KEYS = keyword_tags(["SeriesInstanceUID", "SOPClassUID", "MediaStorageSOPClassUID", "PatientID", "SeriesNumber",
                     "SeriesDescription", "ProtocolName", "StudyDate", "EchoTime", "ImageType", "Rows",
                     "ImagePositionPatient", "PatientName", "AcquisitionTime"])

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
    real_walk = index_mod._walk

    def spy(*args):
        out = real_walk(*args)
        walked.append(out is not None)
        return out

    with monkeypatch.context() as m:
        m.setattr(index_mod, "_walk", spy)
        fast = _outcome(func)
    with monkeypatch.context() as m:
        m.setattr(index_mod, "_walk", lambda *args: None)
        slow = _outcome(func)
    return fast, slow, any(walked)


def _sample_files() -> list[Path]:
    files = sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file() and p.stat().st_size < 20_000_000)
    return files + [NIBABEL_MOSAIC]


def test_keyword_table_matches_the_dicom_dictionary():
    for keyword, (tag, vr) in KEYWORDS.items():
        assert tag_for_keyword(keyword) == tag, keyword
        assert dictionary_VR(tag) == vr, keyword


def test_index_tags_equal_pydicom_on_every_packaged_sample(monkeypatch):
    """Every file in the pydicom wheel (odd encodings, damaged files, DICOMDIRs, reports)
    gives the same summary, or the same error, whichever reader takes it."""
    walked = 0
    for path in _sample_files():
        fast, slow, used = _both_ways(monkeypatch, lambda: read_index_tags(str(path), KEYS))
        assert fast == slow, path.name
        walked += used
    assert walked >= 60, f"the walker read only {walked} files; it should take the common encodings"


def test_index_tags_equal_pydicom_on_scanner_exports(monkeypatch):
    root = shared_path("dcm_qa_nih", "In")
    files = sorted(p for p in root.rglob("*.dcm"))
    assert len(files) > 600
    for path in files[::7]:
        fast, slow, used = _both_ways(monkeypatch, lambda: read_index_tags(str(path), KEYS))
        assert used and fast == slow, path


def test_generated_series_read_the_same_both_ways(monkeypatch, tmp_path):
    data = make_volume((3, 4, 5), nt=2)
    files = write_series(tmp_path / "classic", data, orientation=(0.8, 0.6, 0, -0.6, 0.8, 0),
                         tags={"SeriesDescription": "Müller \\ T1", "SpecificCharacterSet": "ISO_IR 100"})
    files.append(write_enhanced(tmp_path / "enhanced.dcm", data))
    for path in files:
        fast, slow, _ = _both_ways(monkeypatch, lambda: read_index_tags(str(path), KEYS))
        assert fast == slow, path
    assert read_index_tags(str(files[0]), KEYS)["SeriesDescription"] == "Müller_ T1"
    utf8 = write_series(tmp_path / "utf8", data[:, :1], tags={"SeriesDescription": "Žilina 脳",
                                                               "SpecificCharacterSet": "ISO_IR 192"})[0]
    fast, slow, used = _both_ways(monkeypatch, lambda: read_index_tags(str(utf8), keyword_tags(["SeriesDescription"])))
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
            fast, slow, _ = _both_ways(monkeypatch, lambda: read_index_tags(str(path), KEYS))
            # Damage can make one reader see no image where the other still finds one (the
            # walker trusts the meta group length, pydicom the group number); both are clean.
            if fast[0] == slow[0] == "ok" and fast[1] and slow[1] and "Rows" in fast[1] and "Rows" in slow[1]:
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


def test_the_index_stops_after_its_last_wanted_tag(tmp_path):
    """The index stops at the first element past its last wanted tag, so a Siemens slice cut inside
    its CSA header (group 0x0029, after SeriesInstanceUID) still yields pydicom's series UID from the
    whole file, while the full walk reports the cut."""
    src = shared_path("dcm_qa_nih", "In", "20180918Si", "mr_0003")
    first = sorted(src.glob("*.dcm"))[0]
    data = first.read_bytes()
    cut = data.index(b"\x29\x00\x10\x00") + 6  # inside the CSA private creator element
    (tmp_path / "cut.dcm").write_bytes(data[:cut])
    uid = KEYWORDS["SeriesInstanceUID"][0]
    expected = pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID
    with open(tmp_path / "cut.dcm", "rb") as fh:
        stopped = read_elements(fh, frozenset({uid}), stop_after_wanted=True)
    assert stopped.value(uid) == expected and stopped.pixel is None
    with open(tmp_path / "cut.dcm", "rb") as fh:
        try:
            read_elements(fh, frozenset({uid}))
        except Exception as exc:  # noqa: BLE001 - asserted by name below
            assert type(exc).__name__ == "Truncated"
        else:
            raise AssertionError("the full walk read past the cut")


# --- the fast series-UID scan (index.fast_series_uid) -------------------------------------------

def _pydicom_uid(path) -> str | None:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    uid = ds.get("SeriesInstanceUID")
    return None if uid is None else str(uid).strip()


def _head(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(index_mod.HEAD_BYTES)


def test_fast_scan_agrees_with_pydicom_on_scanner_exports_and_samples():
    """Wherever the byte scan answers, it gives pydicom's SeriesInstanceUID; on the scanner exports
    (explicit VR little endian, GE and Siemens) it answers for every image."""
    nih = sorted(shared_path("dcm_qa_nih", "In").rglob("*.dcm"))
    answered = 0
    for path in nih + _sample_files():
        uid = index_mod.fast_series_uid(_head(path))
        if uid is not None:
            assert uid == _pydicom_uid(path), path
            answered += 1
    assert sum(index_mod.fast_series_uid(_head(p)) is not None for p in nih) == len(nih) > 600


def _with_related_series(tmp_path, name: str, undefined_length: bool, nested_after: bool = False,
                         implicit: bool = False) -> tuple[Path, str]:
    """CT_small.dcm with a Related Series Sequence (0008,1250) whose item holds StudyInstanceUID and
    the SeriesInstanceUID of *another* series: the same byte pair as the image's own, earlier in the
    file. ``nested_after`` puts the pair in a later sequence (0040,A375) instead."""
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    item = pydicom.Dataset()
    item.StudyInstanceUID = ds.StudyInstanceUID
    item.SeriesInstanceUID = "1.2.3.4.5.6.7.8.9"
    seq = pydicom.Sequence([item])
    if nested_after:
        ds.CurrentRequestedProcedureEvidenceSequence = seq
    else:
        ds.RelatedSeriesSequence = seq
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = undefined_length
            for it in elem.value:
                it.is_undefined_length_sequence_item = undefined_length
    if implicit:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SeriesInstanceUID)


def test_fast_scan_never_takes_a_series_uid_from_inside_a_sequence(tmp_path):
    """Known answer: the image's own (top-level) UID, which pydicom reads. The scan answers None for
    the nested-first files (then the walker reads them), never the other series' UID."""
    keys = keyword_tags(["SeriesInstanceUID"])
    for undefined in (True, False):
        path, own = _with_related_series(tmp_path, f"related_{undefined}.dcm", undefined)
        assert _pydicom_uid(path) == own
        assert index_mod.fast_series_uid(_head(path)) is None
        assert index_mod.index_chunk([str(path)], [])[0][1]["SeriesInstanceUID"] == own
        later, own_later = _with_related_series(tmp_path, f"later_{undefined}.dcm", undefined, nested_after=True)
        assert index_mod.fast_series_uid(_head(later)) == own_later == _pydicom_uid(later)
    implicit, own = _with_related_series(tmp_path, "implicit.dcm", True, implicit=True)
    assert index_mod.fast_series_uid(_head(implicit)) is None  # implicit VR: the walker's job
    assert read_index_tags(str(implicit), keys)["SeriesInstanceUID"] == own


def test_fast_scan_gives_up_on_sequences_stored_as_un_and_on_cut_headers(tmp_path):
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    raw = bytearray(_head(PYDICOM_FILES / "CT_small.dcm"))
    own = str(ds.SeriesInstanceUID)
    assert index_mod.fast_series_uid(bytes(raw)) == own
    # a private element of VR UN and undefined length before the UID: its inside is implicit VR
    meta_end = 144 + int.from_bytes(raw[140:144], "little")
    un = b"\x09\x00\x10\x10UN\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert index_mod.fast_series_uid(bytes(raw[:meta_end]) + un + bytes(raw[meta_end:])) is None
    at = raw.index(b"\x20\x00\x0e\x00UI")
    assert index_mod.fast_series_uid(bytes(raw[:at + 12])) is None  # cut inside the UID's value
