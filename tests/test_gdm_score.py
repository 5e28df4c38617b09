"""``ldmonai gdm score`` on predictions written in the official SynthRAD2025 layout.

The four parity fixtures become a challenge submission: ``ground_truth/ct/<id>.mha``,
``ground_truth/mask/<id>.mha`` and predictions ``<id>.mha``. The scores must be the values the
official code recorded for them (``expected.json``), to a relative 1e-6.
"""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import shared_path

IDS = {"c1_float_small": "1HNA001", "c2_int16_pad": "1HNA002", "c3_float_large": "1THA003", "c4_int16_clip": "1ABA004"}


@pytest.fixture()
def submission(tmp_path):
    root = shared_path("synthrad_metric_parity")
    for case, pid in IDS.items():
        for sub, name in (("ground_truth/ct", "ct"), ("ground_truth/mask", "mask"), ("predictions", "sct")):
            (tmp_path / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(root / case / f"{name}.mha", tmp_path / sub / f"{pid}.mha")
    return tmp_path, json.loads((root / "expected.json").read_text())["expected"]


def test_scores_of_the_official_layout_equal_the_official_values(submission):
    root, expected = submission
    res = subprocess.run([sys.executable, "-m", "ldmonai", "gdm", "score", str(root / "predictions"),
                          str(root / "ground_truth")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    scores = json.loads((root / "predictions" / "scores.json").read_text())
    by_id = {c["id"]: c for c in scores["cases"]}
    for case, pid in IDS.items():
        for metric, value in expected[case].items():
            assert by_id[pid][metric] == pytest.approx(value, rel=1e-6), (case, metric)
    assert (root / "predictions" / "scores.csv").read_text().count("\n") == 5
    assert "4 cases scored, 0 failed, 0 ground-truth cases without a prediction" in res.stdout


def test_missing_and_misplaced_predictions_are_named(submission):
    root, _ = submission
    (root / "predictions" / "1HNA002.mha").unlink()
    shutil.copy(root / "ground_truth" / "ct" / "1THA003.mha", root / "predictions" / "1HNA001.mha")  # wrong grid
    res = subprocess.run([sys.executable, "-m", "ldmonai", "gdm", "score", str(root / "predictions"),
                          str(root / "ground_truth")], capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "WARNING no prediction for 1HNA002" in res.stdout  # listed, not failed: a split can be scored
    res = subprocess.run([sys.executable, "-m", "ldmonai", "gdm", "score", str(root / "predictions"),
                          str(root / "ground_truth"), "--all"], capture_output=True, text=True)
    assert res.returncode == 1 and "1HNA002.mha" in res.stdout and "no prediction for this case" in res.stdout
    assert "1HNA001.mha" in res.stdout and "grid" in res.stdout
    bad = subprocess.run([sys.executable, "-m", "ldmonai", "gdm", "score", str(root / "nope"), str(root / "ground_truth")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
