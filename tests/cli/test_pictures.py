"""``retune tree RUN --svg FILE`` and ``retune report RUN -o FILE``, as a user runs them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from retune.cli import main
from retune.store import open_store
from tests.cli.conftest import retune_cli
from tests.viz._build import build_run


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store holding a finished 30-node run named ``pic/run``; returns the store URL."""
    url = f"sqlite:///{tmp_path_factory.mktemp('pictures') / 'p.db'}"
    with open_store(url) as store:
        build_run(store, 30, name="pic/run", keys=("loss", "val/acc"), live=False)
    return url


def test_tree_svg_writes_the_picture(small: str, tmp_path: Path) -> None:
    out = tmp_path / "tree.svg"
    done = retune_cli("tree", "pic/run", "--svg", str(out), "--store", small,
                      "--color-by", "val/acc", "--no-collapse")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"wrote {out}: 30 nodes on ")
    root = ET.parse(out).getroot()
    assert (
        len([e for e in root.iter() if e.get("data-node") and "rt-node" in e.get("class", "")])
        == 30
    )
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # readable like any file the user writes


def test_tree_svg_json_and_the_text_tree(
    small: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tree.svg"
    assert main(["tree", "pic/run", "--svg", str(out), "--json", "--store", small]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nodes"] == 30 and report["color_by"] == "val/acc" and report["current"] is None
    assert main(["tree", "pic/run", "--store", small]) == 0  # without --svg: the text tree
    text = capsys.readouterr().out
    assert "n30" in text and "<svg" not in text


def test_a_bad_picture_option_is_one_line_and_writes_nothing(
    small: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tree.svg"
    assert main(["tree", "pic/run", "--svg", str(out), "--color-by", "nope", "--store", small]) == 2
    err = capsys.readouterr().err
    assert not out.exists() and err.count("\n") == 1 and "has no metric 'nope'" in err
    target = tmp_path / "no" / "such" / "r.html"
    assert main(["report", "pic/run", "-o", str(target), "--store", small]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and err.count("\n") == 1
    assert main(["report", "pic/run", "--max-points", "2", "--store", small]) == 2
    assert "--max-points must be at least 3" in capsys.readouterr().err


def test_report_default_file_name_comes_from_the_run(small: str, tmp_path: Path) -> None:
    done = retune_cli("report", "pic/run", "--store", small)  # cwd: tmp_path (conftest)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "pic_run.html"
    html = written.read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>") and html.count('class="retune-chart"') == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries
