"""``retune tag`` and ``retune note`` on a real store (in-process: the same parser and code)."""

from __future__ import annotations

import json

import pytest

from retune.cli import main
from retune.store import open_store


@pytest.fixture
def run(store_url: str) -> str:
    with open_store(store_url) as store:
        store.create_run("mnist", config={}, meta={}, tunables=[])
    return store_url


def test_tags_are_added_and_removed_with_plus_and_minus(
    run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tag", "mnist", "+best", "draft", "--store", run]) == 0
    assert capsys.readouterr().out.endswith(": best draft\n")
    # "-draft" is a tag to remove, not an option; --store/--json after the tags still count
    assert main(["tag", "mnist", "-draft", "+baseline", "--store", run, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == ["baseline", "best"]
    with open_store(run) as store:
        assert store.get_run("mnist").tags == ["baseline", "best"]


def test_a_bad_tag_is_one_line_and_changes_nothing(
    run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tag", "mnist", "+ok", "+two words", "--store", run]) == 2
    assert main(["tag", "mnist", "-", "--store", run]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("retune: error: ") for line in err)
    assert "'-' names no tag" in err[1]
    with open_store(run) as store:
        assert store.get_run("mnist").tags == []


def test_a_note_is_set_shown_and_cleared(run: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["note", "mnist", "lr 1e-3 diverged; try warmup", "--store", run]) == 0
    assert main(["note", "mnist", "--store", run]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "lr 1e-3 diverged; try warmup"
    assert main(["note", "mnist", "", "--store", run, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["note"] == ""
    assert main(["note", "mnist", "bad\x01", "--store", run]) == 2
    assert capsys.readouterr().err.startswith("retune: error: a note has no control")


def test_tags_with_slashes_markup_and_non_ascii_round_trip(
    run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = ["team/vision", "<b>bold</b>", "größe-λ", "--store"]
    assert main(["tag", "mnist", *(f"+{t}" for t in hostile), "--store", run, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == sorted(hostile)
    assert main(["tag", "mnist", "-<b>bold</b>", "--store", run]) == 0
    with open_store(run) as store:
        assert store.get_run("mnist").tags == sorted(set(hostile) - {"<b>bold</b>"})
