"""Every fenced ``bash`` block in README.md, docs/*.md and bundles/*/docs/README.md runs as written.

Each document's blocks run in order, as one user session would type them, in a scratch copy of the
repository (its ``bundles/``, ``configs/`` and ``tests/bundle/``, the ``.venv`` of ``make demo`` on
``PATH`` as after ``source .venv/bin/activate``, and a copy of the ``demo_out/`` that ``make demo``
writes). The only changes to a command are the ones the docs announce (README.md, "Commands in
these docs"), so that the suite stays within its time:

- ``make demo`` and ``make test`` are not run again: CI runs them itself, and ``demo_out/`` is theirs;
  other ``make`` targets run in the checkout, where ``make test`` has already built them;
- a training run (a config list with ``train.json`` and without ``evaluate.json``) gets ``--epochs 1``,
  and LD's pretraining ``--ae_epochs 1`` as well;
- ``torchrun --nproc_per_node=4`` runs 2 processes, on CPU;
- ``monailabel start_server`` runs in the background until ``GET /info/`` answers, then is stopped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bundles").glob("*/docs/README.md"))]
FENCE = re.compile(r"^( *)```bash\n(.*?)^\1```", re.S | re.M)
COMMAND_LINE = re.compile(r"^\s*(\$ )?(python -m monai|ldmonai |torchrun |monailabel |make )", re.M)


def fenced_blocks(path: Path) -> list[str]:
    """The ``bash`` blocks of a Markdown file, dedented (list items indent theirs)."""
    return [textwrap.dedent(block) for _, block in FENCE.findall(path.read_text())]


def documented(root: Path = ROOT) -> list[Path]:
    return [p for p in DOCS if fenced_blocks(p)]


def adapt(block: str, root: Path = ROOT) -> str:
    """The block with the announced changes (module docstring), as a bash script."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        command = line.split(" #", 1)[0].strip()
        if re.fullmatch(r"make (demo|test)", command):
            continue
        if command.startswith("make "):
            line = f"make -C {root} {command[5:]}"
        elif command.startswith("monailabel start_server"):
            line = (f"({command}) > server.log 2>&1 & server=$!\n"
                    "for i in $(seq 240); do curl -sf http://127.0.0.1:8000/info/ > info.json && break; "
                    "kill -0 $server 2>/dev/null || break; sleep 1; done\n"
                    "kill $server; wait $server || true; test -s info.json || { tail -50 server.log; exit 1; }")
        elif "monai.bundle run" in command and "train.json" in command and "evaluate.json" not in command:
            line = command + " --epochs 1" + (" --ae_epochs 1" if "pretrain.json" in command else "")
        line = line.replace("torchrun --nproc_per_node=4", "torchrun --nproc_per_node=2")
        lines.append(line)
    return "set -euo pipefail\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def demo_out(tmp_path_factory) -> Path:
    """The ``demo_out/`` of ``make demo`` (CI runs it before the suite), or a fresh one."""
    if (ROOT / "demo_out" / "overview.png").is_file():
        return ROOT / "demo_out"
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    proc = subprocess.run([sys.executable, "-m", "ldmonai", "demo", "--out-dir", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def workspace(tmp_path: Path, demo_out: Path) -> Path:
    ws = tmp_path / "checkout"
    ws.mkdir()
    for folder in ("bundles", "configs", "tests/bundle"):
        shutil.copytree(ROOT / folder, ws / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for venv in (".venv", ".venv-label"):
        if (ROOT / venv).is_dir():
            (ws / venv).symlink_to(ROOT / venv)
    shutil.copytree(demo_out, ws / "demo_out")
    return ws


def test_every_command_line_is_in_a_bash_block():
    """A command shown as its own line (an indented block, a fence without ``bash``) would escape
    the run below; inline mentions in sentences are not commands to copy."""
    names = [p.relative_to(ROOT).as_posix() for p in documented(ROOT)]
    assert "README.md" in names and "docs/bundles.md" in names and "bundles/ldseg/docs/README.md" in names, names
    stray = []
    for path in DOCS:
        text = FENCE.sub("", path.read_text())
        stray += [f"{path.relative_to(ROOT)}: {m.group(0).strip()}..." for m in COMMAND_LINE.finditer(text)]
    assert not stray, stray


@pytest.mark.slow
@pytest.mark.parametrize("doc", documented(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_documented_commands_run_as_written(doc, tmp_path, demo_out):
    ws = workspace(tmp_path, demo_out)
    venv = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(venv.parent),
           "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    for i, block in enumerate(fenced_blocks(doc)):
        script = adapt(block)
        proc = subprocess.run(["bash", "-c", script], cwd=ws, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (f"{doc.relative_to(ROOT)}, block {i + 1}, exit {proc.returncode}:\n{script}\n"
                                      f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    # nothing was written into the bundle folders: runs go to a working --bundle_root or --output_dir
    before = {p.relative_to(ROOT) for p in (ROOT / "bundles").rglob("*") if "__pycache__" not in p.parts}
    after = {p.relative_to(ws) for p in (ws / "bundles").rglob("*") if "__pycache__" not in p.parts}
    assert after == before, sorted(map(str, after ^ before))[:20]
