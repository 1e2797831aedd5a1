"""``checkpoint``, ``restore``, ``resume``/``continue``, ``tree``, ``gc`` on real stores, with a
real training process where a command must be applied."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

import retune
from retune.store import objects_url_for, open_store
from tests.cli.conftest import poll, retune_cli


@pytest.fixture
def finished(store_url: str) -> str:
    """A finished run "done": n1 steps 1..30, checkpoints at 10, 20, 30."""
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with retune.init("done", model=model, optimizer=opt, store=store_url,
                     checkpoint_every_n_steps=10) as run:  # fmt: skip
        for i in range(30):
            run.step(loss=1.0 / (i + 1))
    return store_url


def _one_line_error(done: object, message: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)  # type: ignore[attr-defined]
    err: str = done.stderr  # type: ignore[attr-defined]
    assert err.startswith("retune: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


def test_a_step_beyond_the_node_is_refused(finished: str) -> None:
    done = retune_cli("restore", "done", "n1@99999", "--store", finished)
    _one_line_error(done, "n1 ends at step 30; step 99999 is beyond it")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["c²"], "names no checkpoint"),
        (["c٣"], "names no checkpoint"),  # int('٣') == 3: not c3
        (["n1@٣0"], "names no checkpoint"),
        (["c1" + "0" * 400], "too large"),
        (["n1@1" + "0" * 400], "too large"),
        (["c1", "--group", "²"], "ASCII digits"),
        (["c1", "lr=1" + "0" * 400], "too large"),
    ],
)
def test_malformed_targets_groups_and_values_are_one_line_errors(
    finished: str, args: list[str], message: str
) -> None:
    _one_line_error(retune_cli("restore", "done", *args, "--store", finished), message)


@pytest.mark.parametrize(
    "args",
    [["set", "done", "lr=0.1", "--group", "²"], ["set", "done", "lr=1" + "0" * 400],
     ["scale", "done", "lr=0.5", "--group", "٣"]],
)  # fmt: skip
def test_set_and_scale_refuse_non_ascii_groups_and_huge_values(
    finished: str, args: list[str]
) -> None:
    done = retune_cli(*args, "--store", finished)
    _one_line_error(done, "")
    assert "ASCII digits" in done.stderr or "too large" in done.stderr


@pytest.mark.parametrize(
    "args",
    [["set", "done", "lr=0.1", "--timeout", "inf"], ["pause", "done", "--timeout", "\u0663"],
     ["gc", "--grace", "-1"], ["checkpoint", "done", "--timeout", "nan"]],
)  # fmt: skip
def test_seconds_are_finite_ascii_numbers(finished: str, args: list[str]) -> None:
    done = retune_cli(*args, "--store", finished)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "must be" in done.stderr.splitlines()[-1]


def test_restore_says_which_checkpoint_and_step_a_target_resolved_to(
    live_run: tuple[str, str],
) -> None:
    name, store = live_run
    with open_store(store) as opened:
        first_checkpoint = opened.list_checkpoints(opened.get_run(name).id)[0]
    label, step = first_checkpoint.label, first_checkpoint.step
    target = f"n1@{step + 2}"
    done = retune_cli("restore", name, target, "lr=0.01", "--store", store, "--timeout", "60")
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith(f"{target} resolves to {label} at step {step}")
    assert second.startswith(f"restored {label} (step {step}): now on node n2")
    beyond = retune_cli("restore", name, "n2@99999", "--store", store)
    _one_line_error(beyond, "n2 has reached step")
    with open_store(store) as opened:  # refused before sending, yet in the audit, with why
        *_, refused = opened.list_commands(opened.get_run(name).id)
    assert (refused.kind, refused.status, refused.source) == ("restore", "rejected", "cli")
    assert refused.payload["target"] == "n2@99999" and "n2 has reached step" in (
        refused.reason or ""
    )
    changes = retune_cli("changes", name, "--store", store)
    assert changes.returncode == 0 and "n2 has reached step" in changes.stdout, changes.stderr
    hostile = "n9/<b>日本"  # a '/', markup and non-ASCII: recorded verbatim, never interpreted
    _one_line_error(retune_cli("restore", name, hostile, "--store", store), "names no checkpoint")
    with open_store(store) as opened:
        *_, refused = opened.list_commands(opened.get_run(name).id)
    assert (refused.status, refused.payload["target"]) == ("rejected", hostile)
    assert hostile in (refused.reason or "")


def test_continue_unpauses_and_resume_without_a_command_is_its_alias(
    live_run: tuple[str, str],
) -> None:
    name, store = live_run
    assert retune_cli("pause", name, "--store", store).returncode == 0
    done = retune_cli("continue", name, "--store", store)
    assert done.returncode == 0 and done.stdout.startswith("applied continue at step"), done.stderr
    assert retune_cli("pause", name, "--store", store).returncode == 0
    alias = retune_cli("resume", name, "--store", store)
    assert alias.returncode == 0 and alias.stdout.startswith("applied continue at step")
    assert "is `retune continue RUN`" in alias.stderr
    with open_store(store) as opened:
        kinds = [c.kind for c in opened.list_commands(opened.get_run(name).id)]
    assert kinds == ["pause", "continue", "pause", "continue"]


def test_resume_of_a_live_run_is_refused_before_its_command_starts(
    live_run: tuple[str, str], tmp_path: Path
) -> None:
    """Its ``retune.init`` would refuse the run (RunInUse): before, the command was started
    anyway and died with that traceback."""
    name, store = live_run
    started = tmp_path / "started"
    command = [sys.executable, "-c", f"open({str(started)!r}, 'w')"]
    done = retune_cli("resume", name, "--store", store, "--", *command)
    _one_line_error(done, "is running in process ")
    assert "stop it first" in done.stderr and not started.exists()


def test_checkpoints_lists_every_listed_checkpoint(finished: str, tmp_path: Path) -> None:
    done = retune_cli("checkpoints", "done", "--store", finished)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["CHECKPOINT", "STEP", "NODE", "WHY", "TAG", "SIZE", "CREATED"]
    assert [row.split()[:4] for row in rows] == [
        ["c1", "10", "n1", "schedule"], ["c2", "20", "n1", "schedule"],
        ["c3", "30", "n1", "schedule"]]  # fmt: skip
    assert all(" kB " in row for row in rows)  # a Linear(3, 1), the RNG state: kilobytes
    listed = json.loads(retune_cli("checkpoints", "done", "--store", finished, "--json").stdout)
    with open_store(finished) as store:
        records = store.list_checkpoints(store.get_run("done").id)
    assert listed == [{"label": c.label, "step": c.step, "node": "n1", "reason": "schedule",
                       "tag": None, "nbytes": c.nbytes, "created_at": c.created_at}
                      for c in records]  # fmt: skip
    assert "manifest" not in repr(records[0])  # a record prints short
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    with retune.init("none", store=empty):
        pass
    none = retune_cli("checkpoints", "none", "--store", empty)
    assert none.returncode == 0 and none.stdout.startswith("no checkpoints listed for none")
    _one_line_error(retune_cli("checkpoints", "nope", "--store", finished), "no run")


def test_tree_draws_every_node(finished: str) -> None:
    done = retune_cli("tree", "done", "--store", finished)
    assert done.returncode == 0
    assert "o n1 steps 0..30  start" in done.stdout and "[c1, c2, c3]" in done.stdout


def test_gc_counts_and_removes_partial_files(finished: str) -> None:
    objects = Path(objects_url_for(finished))
    blob = next(p for p in objects.rglob("*") if p.is_file() and len(p.parent.name) == 2)
    partial = blob.with_name(f"{blob.name}.tmp-0123456789abcdef")
    partial.write_bytes(b"x" * 100)
    old = time.time() - 7200
    os.utime(partial, (old, old))
    dry = retune_cli("gc", "--store", finished, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "partial .tmp- files: would delete 1 (100 bytes)" in dry.stdout and partial.exists()
    done = retune_cli("gc", "--store", finished, "--json")
    report = json.loads(done.stdout)
    assert (report["temporaries"], report["temporaries_bytes"], report["deleted"]) == (1, 100, 0)
    assert not partial.exists() and blob.exists()
    poll(lambda: retune.load("done", store=finished).status == "finished", "the run")


def test_get_shows_the_live_value_a_scheduler_moved(live_run: tuple[str, str]) -> None:
    name, store = live_run  # StepLR halves lr every 50 steps; nobody sends a command

    def lr_moved() -> bool:
        done = retune_cli("get", name, "--store", store, "--json")
        return float(json.loads(done.stdout)["lr"][0]) < 0.1

    poll(lr_moved, "`retune get` to show the scheduler's lr", deadline=120)
    table = retune_cli("get", name, "--store", store).stdout
    (row,) = [line for line in table.splitlines() if line.startswith("lr ")]
    assert float(row.split()[2]) < 0.1


def test_checkpoints_and_node_values_keep_hostile_names(store_url: str) -> None:
    """A tag and a knob name with '/', markup and non-ASCII characters: `retune checkpoints`
    prints and emits the tag as it is; a knob so named, declared after init, joins the start
    node's values under that exact name."""
    tag, knob = "best/<b>日本</b>", "mix/ü<1>"
    with retune.init("hostile/ü", store=store_url) as run:
        run.tunable(knob, 0.5, bounds=(0, 1), inclusive=(False, True))
        run.step(loss=1.0)
        run.checkpoint(tag=tag)
    done = retune_cli("checkpoints", "hostile/ü", "--store", store_url)
    assert done.returncode == 0, done.stderr
    assert tag in done.stdout.splitlines()[1]
    listed = json.loads(retune_cli("checkpoints", run.id, "--store", store_url, "--json").stdout)
    assert [entry["tag"] for entry in listed] == [tag]
    with open_store(store_url) as store:
        (start,) = store.list_nodes(run.id)
    assert start.values[knob] == 0.5
