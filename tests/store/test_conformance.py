"""The Store contract, run against every backend through the ``store`` fixture."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable

import numpy as np
import pytest
import sqlalchemy

from retune.errors import InvalidArgument, NodeNotFound, RunInUse, RunNotFound
from retune.store import INTERRUPTED_WHILE_APPLYING, STALE_AFTER, MetricChunk, Store, open_store


def _chunk(node: int, key: str, steps: list[int], values: list[float]) -> MetricChunk:
    return MetricChunk(
        node=node,
        key=key,
        steps=np.asarray(steps, dtype=np.int64),
        values=np.asarray(values, dtype=np.float64),
        times=np.arange(len(steps), dtype=np.float64),
    )


def _run_with_root(store: Store, name: str = "r") -> str:
    run = store.create_run(name, config={"lr": 0.1}, meta={"host": "h"}, tunables=[])
    store.create_node(
        run.id, parent=None, start_step=0, change_kind="start", values={}, diff={}, created_by="u"
    )
    return run.id


def test_runs_with_the_same_name_get_distinct_ids_and_name_means_latest(store: Store) -> None:
    first = store.create_run("same", config={}, meta={}, tunables=[])
    second = store.create_run("same", config={}, meta={}, tunables=[])
    assert first.id != second.id
    assert store.get_run("same").id == second.id
    assert store.get_run(first.id).id == first.id
    assert [r.id for r in store.list_runs(name="same")] == [second.id, first.id]


def test_unknown_run_raises_run_not_found(store: Store) -> None:
    with pytest.raises(RunNotFound, match="nope"):
        store.get_run("nope")
    with pytest.raises(RunNotFound):
        store.update_run("nope", status="finished")


def test_empty_name_is_rejected(store: Store) -> None:
    with pytest.raises(InvalidArgument):
        store.create_run("", config={}, meta={}, tunables=[])


def test_config_and_meta_round_trip_including_non_finite(store: Store) -> None:
    run = store.create_run(
        "cfg", config={"a": [1, 2.5, "x"], "b": math.nan}, meta={"inf": math.inf}, tunables=[]
    )
    got = store.get_run(run.id)
    assert got.config == {"a": [1, 2.5, "x"], "b": "NaN"}
    assert got.meta == {"inf": "Infinity"}
    assert got.status == "running"


def test_update_run_changes_only_given_fields_and_merges_meta(store: Store) -> None:
    run = store.create_run("u", config={}, meta={"a": 1}, tunables=[])
    store.update_run(run.id, step=7, meta={"b": 2})
    store.update_run(run.id, status="finished", ended_at=run.created_at + 5)
    got = store.get_run(run.id)
    assert (got.step, got.status, got.meta) == (7, "finished", {"a": 1, "b": 2})
    assert got.duration == pytest.approx(5)


def test_update_run_unless_status_keeps_the_status_and_error_but_sets_the_rest(
    store: Store,
) -> None:
    run = store.create_run("u", config={}, meta={}, tunables=[])
    assert store.update_run(run.id, status="crashed", error="first", unless_status={"crashed"})
    kept = store.update_run(
        run.id, status="finished", error="second", step=9, unless_status={"crashed"}
    )
    got = store.get_run(run.id)
    assert not kept and (got.status, got.error, got.step) == ("crashed", "first", 9)
    with pytest.raises(RunNotFound):
        store.update_run("nope", status="crashed", unless_status={"crashed"})


def test_update_run_unless_status_is_one_compare_and_set_under_a_race(store: Store) -> None:
    """Eight writers each record a crash unless one is recorded: exactly one wins, and the
    status and error are that writer's (a read-then-write would let several win)."""
    run = store.create_run("race", config={}, meta={}, tunables=[])
    start = threading.Barrier(8)
    won: list[str] = []

    def crash(name: str) -> None:
        start.wait()
        if store.update_run(run.id, status="crashed", error=name, unless_status={"crashed"}):
            won.append(name)

    threads = [threading.Thread(target=crash, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and store.get_run(run.id).error == won[0]


def test_list_runs_filters_by_status(store: Store) -> None:
    a = store.create_run("a", config={}, meta={}, tunables=[])
    store.create_run("b", config={}, meta={}, tunables=[])
    store.update_run(a.id, status="crashed", error="boom")
    assert [r.name for r in store.list_runs(statuses=["crashed"])] == ["a"]
    assert store.get_run(a.id).error == "boom"


def test_nodes_are_numbered_per_run_and_close_once(store: Store) -> None:
    run_id = _run_with_root(store)
    child = store.create_node(
        run_id,
        parent=1,
        start_step=10,
        change_kind="set",
        values={"lr": 0.01},
        diff={"lr": [0.1, 0.01]},
        created_by="mia",
    )
    assert child.id == 2 and child.label == "n2"
    store.end_node(run_id, 1, 10)
    store.end_node(run_id, 1, 99)  # already closed: unchanged
    nodes = store.list_nodes(run_id)
    assert [(n.id, n.parent, n.start_step, n.end_step) for n in nodes] == [
        (1, None, 0, 10),
        (2, 1, 10, None),
    ]
    assert nodes[1].diff == {"lr": [0.1, 0.01]}
    other = _run_with_root(store, "other")
    assert [n.id for n in store.list_nodes(other)] == [1]


def test_metrics_round_trip_with_nan_and_inf_kept(store: Store) -> None:
    run_id = _run_with_root(store)
    store.append_metrics(
        run_id,
        [_chunk(1, "loss", [1, 2, 3], [0.5, math.nan, math.inf])],
        step=3,
        heartbeat_at=123.0,
    )
    data = store.read_metric(run_id, "loss")
    assert data.steps.tolist() == [1, 2, 3]
    assert data.values[0] == 0.5 and math.isnan(data.values[1]) and data.values[2] == math.inf
    assert data.nodes.tolist() == [1, 1, 1]
    run = store.get_run(run_id)
    assert (run.step, run.heartbeat_at) == (3, 123.0)


def test_read_metric_filters_by_range_and_node_and_sorts(store: Store) -> None:
    run_id = _run_with_root(store)
    store.create_node(
        run_id, parent=1, start_step=4, change_kind="set", values={}, diff={}, created_by=None
    )
    store.append_metrics(run_id, [_chunk(1, "x", [3, 4], [3.0, 4.0])])
    store.append_metrics(run_id, [_chunk(1, "x", [1, 2], [1.0, 2.0])])
    store.append_metrics(run_id, [_chunk(2, "x", [5, 6], [50.0, 60.0])])
    everything = store.read_metric(run_id, "x")
    assert everything.steps.tolist() == [1, 2, 3, 4, 5, 6]
    window = store.read_metric(run_id, "x", start=2, end=5)
    assert window.steps.tolist() == [2, 3, 4, 5]
    assert store.read_metric(run_id, "x", nodes=[2]).values.tolist() == [50.0, 60.0]
    assert len(store.read_metric(run_id, "missing").steps) == 0


def test_iter_metric_chunks_streams_every_point_in_order_page_by_page(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _run_with_root(store)
    store.create_node(
        run_id, parent=1, start_step=4, change_kind="set", values={}, diff={}, created_by=None
    )
    store.append_metrics(run_id, [_chunk(1, "x", [3, 4], [3.0, 4.0])])
    store.append_metrics(run_id, [_chunk(1, "x", [1, 2], [1.0, math.nan])])
    store.append_metrics(run_id, [_chunk(2, "x", [6, 5], [60.0, 50.0]), _chunk(2, "a", [5], [9.0])])
    for step in range(7, 40):  # more chunk rows than one page of the paged backends
        store.append_metrics(run_id, [_chunk(2, "x", [step], [float(step)])])
    if hasattr(type(store), "ITER_PAGE"):
        monkeypatch.setattr(type(store), "ITER_PAGE", 4)

    def flat(chunks: Iterable[MetricChunk]) -> list[tuple[str, int, int, float | str]]:
        return [
            (c.key, c.node, s, v if v == v else "nan")  # NaN != NaN
            for c in chunks
            for s, v in zip(c.steps.tolist(), c.values.tolist(), strict=True)
        ]

    chunks = list(store.iter_metric_chunks(run_id))
    assert all(len(c.steps) == len(c.values) == len(c.times) > 0 for c in chunks)
    assert all(not c.steps.flags.writeable for c in chunks)
    points = flat(chunks)
    assert [p[0] for p in points] == ["a"] + ["x"] * 39  # keys sorted, every point once
    x = [(n, s) for k, n, s, _ in points if k == "x"]
    assert x == [(1, 1), (1, 2), (1, 3), (1, 4)] + [(2, s) for s in range(5, 40)]
    assert points[2][3] == "nan"
    window = flat(store.iter_metric_chunks(run_id, keys=["x"], nodes=[2], start=6, end=8))
    assert [(n, s, v) for _, n, s, v in window] == [(2, 6, 60.0), (2, 7, 7.0), (2, 8, 8.0)]
    assert list(store.iter_metric_chunks(run_id, keys=["missing"])) == []
    # the interface's default (for third-party backends) streams the same points
    assert flat(Store.iter_metric_chunks(store, run_id)) == points
    assert (
        flat(Store.iter_metric_chunks(store, run_id, keys=["x"], nodes=[2], start=6, end=8))
        == window
    )


STEP_SHAPES = {
    "consecutive": list(range(10, 1010)),
    "one": [7],
    "two": [3, 4],
    "a gap": [1, 2, 4],
    "a repeat": [5, 5, 6],
    "a gap and a repeat (the ends still span count - 1)": [1, 1, 3],
    "descending": [9, 8, 7],
    "large": [2**62 - 3, 2**62 - 2, 2**62 - 1],
}


def test_every_shape_of_steps_reads_back_exactly_and_consecutive_ones_are_implied(
    store: Store,
) -> None:
    """Schema v0.3.0 stores no steps for a chunk of consecutive ones; every reader rebuilds
    them, and every other shape keeps each step."""
    run_id = _run_with_root(store)
    for index, (key, steps) in enumerate(STEP_SHAPES.items()):
        values = [index + i / 8 for i in range(len(steps))]
        store.append_metrics(run_id, [_chunk(1, key, steps, values)])
        series = store.read_metric(run_id, key)
        assert sorted(steps) == series.steps.tolist(), key
        (chunk,) = store.iter_metric_chunks(run_id, keys=[key])
        assert chunk.steps.tolist() == sorted(steps) and chunk.steps.dtype == np.int64, key
        assert store.last_metrics([run_id])[run_id][key] == (steps[-1], values[-1]), key
    engine = sqlalchemy.create_engine(store.url)  # what the rows hold
    with engine.connect() as conn:
        stored: dict[str, int] = dict(
            conn.execute(
                sqlalchemy.text("SELECT key, length(steps) FROM metric_chunks WHERE run_id = :r"),
                {"r": run_id},
            ).all()
        )
    engine.dispose()
    implied = {"consecutive", "one", "two", "large"}
    assert stored == {key: 0 if key in implied else 8 * len(s) for key, s in STEP_SHAPES.items()}


def test_returned_arrays_are_read_only_snapshots(store: Store) -> None:
    run_id = _run_with_root(store)
    store.append_metrics(run_id, [_chunk(1, "x", [1], [1.0])])
    data = store.read_metric(run_id, "x")
    with pytest.raises(ValueError):
        data.values[0] = 2.0
    store.append_metrics(run_id, [_chunk(1, "x", [2], [2.0])])
    assert data.values.tolist() == [1.0]


def test_metric_keys_and_last_metrics(store: Store) -> None:
    a = _run_with_root(store, "a")
    b = _run_with_root(store, "b")
    store.append_metrics(a, [_chunk(1, "loss", [1, 2], [1.0, 0.5]), _chunk(1, "acc", [2], [0.9])])
    store.append_metrics(a, [_chunk(1, "loss", [3], [0.25])])
    assert store.metric_keys(a) == ["acc", "loss"]
    last = store.last_metrics([a, b])
    assert last == {a: {"loss": (3, 0.25), "acc": (2, 0.9)}, b: {}}


def test_commands_move_from_pending_once(store: Store) -> None:
    run_id = _run_with_root(store)
    first = store.submit_command(run_id, "set", {"lr": 0.01}, source="cli", user="mia")
    second = store.submit_command(run_id, "pause", {}, source="python", user=None)
    assert first.status == "pending" and first.source == "cli" and first.user == "mia"
    assert [c.id for c in store.pending_commands(run_id)] == [first.id, second.id]
    assert [c.id for c in store.pending_commands(run_id, after_id=first.id)] == [second.id]
    done = store.resolve_command(first.id, status="applied", applied_step=12, node=2)
    assert (done.status, done.applied_step, done.node) == ("applied", 12, 2)
    again = store.resolve_command(first.id, status="rejected", reason="late")
    assert again.status == "applied" and again.reason is None
    store.resolve_command(second.id, status="rejected", reason="finished run")
    assert store.pending_commands(run_id) == []
    assert [c.status for c in store.list_commands(run_id)] == ["applied", "rejected"]
    assert store.get_command(second.id).reason == "finished run"
    with pytest.raises(InvalidArgument):
        store.resolve_command(first.id, status="maybe")
    with pytest.raises(InvalidArgument):
        store.get_command(10_000)


def test_checkpoints_are_numbered_per_run(store: Store) -> None:
    run_id = _run_with_root(store)
    c1 = store.add_checkpoint(
        run_id, node=1, step=5, tag=None, reason="schedule", manifest={"t": [1]}, nbytes=10
    )
    c2 = store.add_checkpoint(
        run_id, node=1, step=9, tag="best", reason="user", manifest={"t": [2]}, nbytes=20
    )
    assert (c1.id, c2.id, c2.label) == (1, 2, "c2")
    assert [c.tag for c in store.list_checkpoints(run_id)] == [None, "best"]
    assert sorted(m["t"][0] for m in store.all_manifests()) == [1, 2]
    store.delete_checkpoints(run_id, [1])
    assert [c.id for c in store.list_checkpoints(run_id)] == [2]


def test_events_are_appended_in_order(store: Store) -> None:
    run_id = _run_with_root(store)
    e1 = store.add_event(run_id, "crashed", {"error": "x"}, node=1, step=3)
    store.add_event(run_id, "note", {})
    assert [e.kind for e in store.list_events(run_id)] == ["crashed", "note"]
    assert [e.kind for e in store.list_events(run_id, after_id=e1.id)] == ["note"]


def test_concurrent_writers_from_threads_lose_nothing(store: Store) -> None:
    run_id = _run_with_root(store)

    def write(key: str) -> None:
        for i in range(20):
            store.append_metrics(run_id, [_chunk(1, key, [i], [float(i)])], step=i)

    threads = [threading.Thread(target=write, args=(f"k{t}",)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for t in range(4):
        assert store.read_metric(run_id, f"k{t}").steps.tolist() == list(range(20))


def test_reopen_run_clears_the_end(store: Store) -> None:
    run = store.create_run("again", config={}, meta={}, tunables=[])
    store.update_run(run.id, status="crashed", ended_at=run.created_at + 1, error="boom")
    reopened = store.reopen_run(run.id)
    assert (reopened.status, reopened.ended_at, reopened.error) == ("running", None, None)
    with pytest.raises(RunNotFound):
        store.reopen_run("nope")


def test_node_and_checkpoint_numbers_stay_unique_under_concurrency(store: Store) -> None:
    run_id = _run_with_root(store)

    def add(worker: int) -> None:
        for _ in range(10):
            store.create_node(run_id, parent=1, start_step=worker, change_kind="set", values={},
                              diff={}, created_by=str(worker))  # fmt: skip
            store.add_checkpoint(run_id, node=1, step=worker, tag=None, reason="user",
                                 manifest={}, nbytes=0)  # fmt: skip

    threads = [threading.Thread(target=add, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [n.id for n in store.list_nodes(run_id)] == list(range(1, 42))
    assert [c.id for c in store.list_checkpoints(run_id)] == list(range(1, 41))


def test_writes_for_an_unknown_run_raise_run_not_found(store: Store) -> None:
    """A foreign-key violation is the caller's mistake (404), not a store failure (503)."""
    with pytest.raises(RunNotFound, match="ghost"):
        store.submit_command("ghost", "pause", {}, source="cli", user=None)
    with pytest.raises(RunNotFound, match="ghost"):
        store.add_event("ghost", "note", {})
    with pytest.raises(RunNotFound, match="ghost"):
        store.create_node(
            "ghost",
            parent=None,
            start_step=0,
            change_kind="start",
            values={},
            diff={},
            created_by=None,
        )
    with pytest.raises(RunNotFound, match="ghost"):
        store.append_metrics("ghost", [_chunk(1, "loss", [1], [0.5])])
    run_id = _run_with_root(store)
    with pytest.raises(NodeNotFound):
        store.append_metrics(run_id, [_chunk(9, "loss", [1], [0.5])])
    assert store.read_metric(run_id, "loss").steps.tolist() == []


def test_a_command_rejected_at_submission_is_never_pending(store: Store) -> None:
    run_id = _run_with_root(store)
    bad = store.submit_command(
        run_id, "scale", {"factors": {"weight_decay": 0}}, source="cli", user=None,
        status="rejected", reason="scale factor for weight_decay must be finite and > 0",
    )  # fmt: skip
    assert (bad.status, bad.reason) == (
        "rejected",
        "scale factor for weight_decay must be finite and > 0",
    )
    assert bad.resolved_at is not None
    assert store.pending_commands(run_id) == []
    assert store.claim_command(bad.id) is None
    with pytest.raises(InvalidArgument):
        store.submit_command(run_id, "pause", {}, source="cli", user=None, status="applied")


def test_a_command_is_claimed_once_then_resolved(store: Store) -> None:
    run_id = _run_with_root(store)
    command = store.submit_command(run_id, "pause", {}, source="cli", user=None)
    claimed = store.claim_command(command.id)
    assert claimed is not None and claimed.status == "applying" and claimed.id == command.id
    assert store.claim_command(command.id) is None
    assert store.pending_commands(run_id) == []
    done = store.resolve_command(command.id, status="applied", applied_step=3, node=1)
    assert (done.status, done.applied_step) == ("applied", 3)
    assert store.claim_command(command.id) is None
    with pytest.raises(InvalidArgument):
        store.claim_command(10_000)


def test_concurrent_claims_have_exactly_one_winner(store: Store) -> None:
    """Four handles (as four processes would) race to claim each of 30 commands."""
    run_id = _run_with_root(store)
    ids = [store.submit_command(run_id, "pause", {}, source="cli", user=None).id for _ in range(30)]
    handles = [open_store(store.url) for _ in range(4)]
    wins: list[list[int]] = [[] for _ in handles]
    start = threading.Barrier(len(handles))

    def claim(worker: int) -> None:
        start.wait()
        for command_id in ids:
            if handles[worker].claim_command(command_id) is not None:
                wins[worker].append(command_id)

    threads = [threading.Thread(target=claim, args=(w,)) for w in range(len(handles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for handle in handles:
        handle.close()
    assert sorted(i for won in wins for i in won) == ids
    assert {c.status for c in store.list_commands(run_id)} == {"applying"}


def test_create_run_with_its_root_in_one_transaction(store: Store) -> None:
    run = store.create_run(
        "rooted", config={}, meta={}, tunables=[], root_values={"lr": 0.1}, created_by="mia"
    )
    (root,) = store.list_nodes(run.id)
    assert (root.id, root.parent, root.start_step, root.change_kind) == (1, None, 0, "start")
    assert (root.values, root.created_by, root.end_step) == ({"lr": 0.1}, "mia", None)


def _dead(store: Store, status: str = "running") -> str:
    run_id = _run_with_root(store)
    store.update_run(run_id, status=status, heartbeat_at=time.time() - STALE_AFTER - 5)
    return run_id


def test_attach_refuses_a_live_run_naming_its_process(store: Store) -> None:
    run_id = _run_with_root(store, "live")
    store.update_run(run_id, meta={"process": {"host": "gpu7", "pid": 4242}})
    pending = store.submit_command(run_id, "pause", {}, source="cli", user=None)
    with pytest.raises(RunInUse, match=r"process 4242 on host gpu7") as caught:
        store.attach_run(run_id, owner={"host": "h", "pid": 1}, reason="the run was not live")
    assert caught.value.http_status == 409
    assert store.get_command(pending.id).status == "pending"  # nothing changed
    assert store.get_run(run_id).meta["process"] == {"host": "gpu7", "pid": 4242}
    store.update_run(run_id, status="paused")
    with pytest.raises(RunInUse, match="is paused"):
        store.attach_run(run_id, owner={"host": "h", "pid": 1}, reason="the run was not live")
    with pytest.raises(RunNotFound):
        store.attach_run("nope", owner={}, reason="x")


def test_attach_takes_a_dead_or_ended_run_and_rejects_its_stale_commands(store: Store) -> None:
    run_id = _dead(store)
    old = store.submit_command(run_id, "stop", {}, source="cli", user=None)
    claimed = store.submit_command(run_id, "pause", {}, source="cli", user=None)
    store.claim_command(claimed.id)  # its process died while applying it
    attached = store.attach_run(
        run_id, owner={"host": "h2", "pid": 7, "user": "mia"}, reason="the run was not live"
    )
    assert (attached.status, attached.ended_at, attached.error) == ("running", None, None)
    assert attached.heartbeat_at is not None and attached.heartbeat_at > time.time() - 5
    assert attached.meta["process"] == {"host": "h2", "pid": 7, "user": "mia"}
    got = store.get_command(old.id)
    assert (got.status, got.reason) == ("rejected", "the run was not live")
    got = store.get_command(claimed.id)  # not "not live": it was being applied when it died
    assert (got.status, got.reason) == ("rejected", INTERRUPTED_WHILE_APPLYING)
    ended = _run_with_root(store, "ended")
    store.update_run(ended, status="finished", ended_at=time.time(), error="x")
    assert store.attach_run(ended, owner={}, reason="r").status == "running"
    with pytest.raises(RunInUse):  # now it is live
        store.attach_run(ended, owner={}, reason="r")


def test_concurrent_attaches_have_exactly_one_winner(store: Store) -> None:
    run_id = _dead(store, status="crashed")
    handles = [open_store(store.url) for _ in range(4)]
    outcomes: list[str] = []
    start = threading.Barrier(len(handles))

    def attach(worker: int) -> None:
        start.wait()
        try:
            handles[worker].attach_run(run_id, owner={"pid": worker}, reason="r")
            outcomes.append(f"won {worker}")
        except RunInUse:
            outcomes.append("refused")

    threads = [threading.Thread(target=attach, args=(w,)) for w in range(len(handles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for handle in handles:
        handle.close()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("refused") == 3
    assert store.get_run(run_id).meta["process"] == {"pid": int(winners[0].split()[1])}


def test_values_a_database_cannot_hold_are_the_callers_mistake(store: Store) -> None:
    """An id beyond the 32-bit column, or NUL in text: a clear error, never 'unavailable'."""
    run_id = _run_with_root(store)
    for command_id in (2**31, 2**63, -(2**40)):
        with pytest.raises(InvalidArgument, match="no command with id"):
            store.get_command(command_id)
    with pytest.raises((InvalidArgument, RunNotFound)):
        store.get_run("bad\x00name")
    try:  # SQLite keeps NUL in text; PostgreSQL cannot: then it is the caller's mistake
        store.add_event(run_id, "note\x00", {})
    except InvalidArgument as e:
        assert "cannot hold a value" in str(e)
    assert store.get_run(run_id).id == run_id  # the store is still usable


def test_a_command_queued_on_an_ended_run_is_rejected_in_the_same_transaction(
    store: Store,
) -> None:
    """submit() read the run live, then finish() ended it: the command must not stay
    pending forever (found by the concurrency campaign)."""
    run_id = _run_with_root(store)
    queued = store.submit_command(run_id, "pause", {}, source="cli", user=None)
    store.update_run(run_id, status="finished")
    late = store.submit_command(run_id, "pause", {}, source="cli", user=None)
    assert late.status == "rejected" and "finished" in (late.reason or "")
    assert store.get_command(queued.id).status == "rejected"
    assert "ended (finished)" in (store.get_command(queued.id).reason or "")
    assert [c for c in store.list_commands(run_id) if c.status in ("pending", "applying")] == []


def test_an_ending_leaves_a_command_being_applied_to_its_process(store: Store) -> None:
    """Another process recording the end (a crashed rank) must not turn a change the live
    process is still applying into a rejection: that process records it applied."""
    run_id = _run_with_root(store)
    taken = store.submit_command(run_id, "set", {"values": {"lr": 0.1}}, source="cli", user=None)
    assert store.claim_command(taken.id) is not None
    queued = store.submit_command(run_id, "pause", {}, source="cli", user=None)
    store.update_run(run_id, status="crashed", ended_at=time.time(), error="rank 1 crashed")
    assert store.get_command(queued.id).status == "rejected"
    assert store.get_command(taken.id).status == "applying"
    done = store.resolve_command(taken.id, status="applied", applied_step=3, node=1)
    assert (done.status, done.applied_step) == ("applied", 3)


def test_tags_replace_add_remove_sorted_unique_on_any_status(store: Store) -> None:
    run_id = _run_with_root(store, "tagged")
    assert store.get_run(run_id).tags == []
    store.update_run(run_id, status="finished", ended_at=time.time())
    assert store.set_run_tags(run_id, ["b", "a", "b"]).tags == ["a", "b"]
    assert store.set_run_tags(run_id, add=["c"], remove=["a"]).tags == ["b", "c"]
    assert store.set_run_tags(run_id, []).tags == []
    assert store.get_run(run_id).status == "finished"


@pytest.mark.parametrize("bad", ["", "two words", "a,b", "x" * 65, "bell\a"])
def test_a_bad_tag_is_rejected_and_changes_nothing(store: Store, bad: str) -> None:
    run_id = _run_with_root(store, "tagged")
    store.set_run_tags(run_id, ["keep"])
    with pytest.raises(InvalidArgument):
        store.set_run_tags(run_id, add=["fine", bad])
    assert store.get_run(run_id).tags == ["keep"]


def test_tags_are_capped(store: Store) -> None:
    run_id = _run_with_root(store, "tagged")
    with pytest.raises(InvalidArgument, match="at most"):
        store.set_run_tags(run_id, [f"t{i}" for i in range(33)])
    assert store.get_run(run_id).tags == []


def test_notes_round_trip_and_reject_control_characters(store: Store) -> None:
    run_id = _run_with_root(store, "noted")
    text = 'lr 1e-3 looked best.\n\tSee <b>n3</b> & "n5" — ünïcode'
    assert store.set_run_note(run_id, text).note == text
    assert store.get_run(run_id).note == text
    with pytest.raises(InvalidArgument):
        store.set_run_note(run_id, "nul\x00")
    assert store.get_run(run_id).note == text
    with pytest.raises(RunNotFound):
        store.set_run_note("nope", "x")
    with pytest.raises(RunNotFound):
        store.set_run_tags("nope", ["x"])


def test_node_info_is_stored_and_merged(store: Store) -> None:
    run_id = _run_with_root(store, "info")
    node = store.create_node(
        run_id,
        parent=1,
        start_step=5,
        change_kind="explore",
        values={"lr": 0.1},
        diff={"lr": [0.2, 0.1]},
        created_by="u",
        info={"score": math.inf, "metric": "loss"},
    )
    assert node.info == {"score": "Infinity", "metric": "loss"}
    merged = store.update_node_info(run_id, node.id, {"score": 0.5, "winner": True})
    assert merged.info == {"score": 0.5, "metric": "loss", "winner": True}
    assert store.list_nodes(run_id)[0].info == {}
    assert store.list_nodes(run_id)[1].info == merged.info
    with pytest.raises(NodeNotFound):
        store.update_node_info(run_id, 99, {"x": 1})


def test_add_node_values_adds_only_what_the_node_does_not_record(store: Store) -> None:
    run_id = _run_with_root(store)
    node = store.create_node(run_id, parent=1, start_step=5, change_kind="set",
                             values={"lr": 0.1}, diff={"lr": [0.2, 0.1]}, created_by="u")  # fmt: skip
    added = store.add_node_values(run_id, node.id, {"lr": 0.5, "clip": 1.0, "betas": (0.9, 0.99)})
    assert added.values == {"lr": 0.1, "clip": 1.0, "betas": [0.9, 0.99]}  # lr kept
    assert store.list_nodes(run_id)[1].values == added.values
    assert store.list_nodes(run_id)[0].values == {}
    assert store.add_node_values(run_id, node.id, {"clip": 2.0}).values == added.values
    with pytest.raises(NodeNotFound):
        store.add_node_values(run_id, 99, {"x": 1})
