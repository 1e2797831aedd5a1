"""What the report says, without a browser: best points, audit sentences, the page's
promises (no script, nothing loaded, every name escaped)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np

from retune.session._snapshot import read_snapshot
from retune.store import CommandRecord
from retune.viz._report import CSP, best_points, command_sentence, report_html
from tests.viz.conftest import BigRun


def _command(**fields: object) -> CommandRecord:
    base: dict[str, object] = dict(id=1, run_id="r", kind="set", payload={}, status="applied",
                                   reason=None, source="cli", user="mia", created_at=0.0,
                                   resolved_at=1.0, applied_step=None, node=None, result={})  # fmt: skip
    base.update(fields)
    return CommandRecord(**base)  # type: ignore[arg-type]


def test_audit_sentences() -> None:
    applied = _command(payload={"values": {"lr": 1e-3}, "group": None, "mode": "rescale"},
                       applied_step=300, node=3, result={"diff": {"lr": [0.01, 0.001]}})  # fmt: skip
    assert command_sentence(applied).endswith(
        "mia (cli) asked to set lr = 0.001. Applied at step 300, on new node n3 (lr 0.01 -> 0.001)."
    )
    scaled = _command(kind="scale", payload={"factors": {"lr": 0.5}, "group": 1,
                                             "mode": "constant"}, status="rejected",
                      reason="lr: below its lower bound")  # fmt: skip
    assert command_sentence(scaled).endswith(
        "asked to scale lr by 0.5 in param group 1 (replacing the schedule). Rejected: lr: "
        "below its lower bound."
    )
    restored = _command(kind="restore", payload={"target": "c4", "set": {"wd": 0.01}},
                        applied_step=100, node=5, result={"checkpoint": "c4"}, source="ui")  # fmt: skip
    assert command_sentence(restored).endswith(
        "mia (ui) asked to restore c4 with wd = 0.01. Applied at step 100, on new node n5, from c4."
    )
    tagged = _command(kind="checkpoint", payload={"tag": "good"}, status="pending", user=None)
    assert command_sentence(tagged).endswith(
        "someone (cli) asked to take a checkpoint tagged good. Not applied yet (pending)."
    )


def test_best_point_per_metric(big_run: BigRun) -> None:
    snapshot = read_snapshot(big_run.store, big_run.run_id)
    bests = {b.key: b for b in best_points(snapshot)}
    loss = big_run.store.read_metric(big_run.run_id, "loss")
    at = int(np.argmin(loss.values))
    assert (bests["loss"].value, bests["loss"].node) == (loss.values[at], loss.nodes[at])
    assert bests["loss"].goal == "min" and bests[big_run.keys[1]].goal == "max"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def test_the_page_loads_nothing_and_runs_nothing(big_run: BigRun) -> None:
    snapshot = read_snapshot(big_run.store, big_run.run_id)
    html = report_html(snapshot, big_run.store.list_commands(big_run.run_id), now=0.0)
    parser = _Tags()
    parser.feed(html)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert "iframe" not in parser.tags and "img" not in parser.tags
    assert f'content="{CSP}"' in html and "default-src 'none'" in CSP
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "&lt;script&gt;alert(" in html and "\x01" not in html
