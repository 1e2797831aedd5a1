"""The hot path's column buffers: nothing the collector tracks piles up, every point reaches
the store once with its step, value and node, whatever the order of names and the timing of
the writer's drains."""

from __future__ import annotations

import gc
import math
import time

import numpy as np
import pytest

import retune


def test_buffered_steps_keep_no_objects_alive_for_the_collector(store_url: str) -> None:
    """The old buffer kept a tuple and a dict per step until the flush: 20,000 steps meant
    20,000+ tracked objects and full collections while training."""
    run = retune.init("flat", store=store_url, flush_interval=3600)
    for _ in range(100):  # warm: the groups exist
        run.step(loss=1.0, acc=2.0, lr=0.1)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(20_000):
        run.step(loss=1.0 / (i + 1), acc=float(i), lr=0.1)
    after = len(gc.get_objects())
    # The old buffer grew by 40,000 here (a tuple and a dict per step). A small allowance is
    # left for other threads of this test process (an earlier test's server or writer winding
    # down allocates too: 152 objects once in CI), far below one object per step.
    assert after - before < 1_000
    run.finish()
    loss = retune.load("flat", store=store_url).metric("loss")
    assert loss.steps.tolist() == list(range(1, 20_101))


def test_names_in_any_order_and_mixed_calls_keep_every_point(store_url: str) -> None:
    with retune.init("mixed", store=store_url, flush_interval=3600) as run:
        run.step(a=1.0, b=2.0)
        run.step(b=4.0, a=3.0)  # the same names in another order
        run.step({"a": 5, "b": True})  # ints and bools become floats
        run.log(val=np.float32(0.5))  # numpy scalars too
        run.step(a=math.nan, b=math.inf)
        run.log(a=7.0)  # the same step again, another set of names
        run.step(a=8.0, b=9.0)
    snap = retune.load("mixed", store=store_url)
    a, b, val = snap.metric("a"), snap.metric("b"), snap.metric("val")
    assert a.steps.tolist() == [1, 2, 3, 4, 4, 5]
    assert [float(v).hex() for v in a.values] == [
        float(v).hex() for v in (1.0, 3.0, 5.0, math.nan, 7.0, 8.0)
    ]
    assert b.steps.tolist() == [1, 2, 3, 4, 5] and b.values.tolist()[:3] == [2.0, 4.0, 1.0]
    assert b.values[3] == math.inf
    assert (val.steps.tolist(), val.values.tolist()) == ([3], [0.5])


def test_calls_with_as_many_names_but_other_ones_keep_each_point_under_its_own_name(
    store_url: str,
) -> None:
    """The hot path takes a call as the last call's names when it has as many and each is
    found: a call with the same count but another name must not land in that group."""
    with retune.init("same-width", store=store_url, flush_interval=3600) as run:
        for i in range(1, 7):
            if i % 2:
                run.step(a=float(i))  # width 1, alternating names
                run.step(b=float(-i))
            else:
                run.step(a=float(i), b=float(10 * i))  # width 2, one name shared
                run.step(a=float(i), c=float(100 * i))
                run.step(c=float(1000 * i), a=float(i))  # the last call's names, reordered
        with pytest.raises(retune.errors.InvalidArgument):
            run.step(a=1.0, c="not a number")  # the fast path's group: refused whole
    snap = retune.load("same-width", store=store_url)
    a, b, c = (snap.metric(k) for k in "abc")
    assert list(zip(a.steps.tolist(), a.values.tolist(), strict=True)) == [
        (1, 1.0), (3, 2.0), (4, 2.0), (5, 2.0), (6, 3.0), (8, 4.0), (9, 4.0), (10, 4.0),
        (11, 5.0), (13, 6.0), (14, 6.0), (15, 6.0),
    ]  # fmt: skip
    assert list(zip(b.steps.tolist(), b.values.tolist(), strict=True)) == [
        (2, -1.0), (3, 20.0), (7, -3.0), (8, 40.0), (12, -5.0), (13, 60.0),
    ]  # fmt: skip
    assert list(zip(c.steps.tolist(), c.values.tolist(), strict=True)) == [
        (4, 200.0), (5, 2000.0), (9, 400.0), (10, 4000.0), (14, 600.0), (15, 6000.0),
    ]  # fmt: skip


def test_names_with_slashes_markup_and_non_ascii_take_the_fast_path_and_read_back(
    store_url: str,
) -> None:
    """The group's itemgetter matches names by equality whatever their characters; calls
    alternate between two groups of the same width that share one name."""
    names = ("val/loss", "<b>ünïcode</b>", "日本")
    with retune.init("hostile-names", store=store_url, flush_interval=3600) as run:
        for i in range(1, 7):
            if i % 2:
                run.step({names[0]: float(i), names[1]: -float(i)})
            else:
                run.step({names[1]: -float(i), names[2]: 10.0 * i})  # as many, another name
    snap = retune.load("hostile-names", store=store_url)
    first, second, third = (snap.metric(name) for name in names)
    assert (first.steps.tolist(), first.values.tolist()) == ([1, 3, 5], [1.0, 3.0, 5.0])
    assert second.values.tolist() == [-float(i) for i in range(1, 7)]
    assert (third.steps.tolist(), third.values.tolist()) == ([2, 4, 6], [20.0, 40.0, 60.0])


@pytest.mark.parametrize("grad", [False, True], ids=["tensor", "tensor-requiring-grad"])
def test_tensor_values_converted_while_the_writer_drains_are_stored_exactly(
    store_url: str, grad: bool
) -> None:
    """A one-element tensor's ``float()`` lets other threads run. Converted inside the shared
    array's ``extend``, that let the writer's drain shift the array mid-append: garbage
    values (denormals, other rows' values) were stored. Every point must be its own."""
    import warnings

    import torch

    run = retune.init("tensors", store=store_url, flush_interval=0.001, poll_interval=0.0005)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float() of a tensor that requires grad warns
        for s in range(1, 20_001):
            value = torch.tensor(float(s), requires_grad=grad)
            if s % 3 == 0:
                run.step(a=value, b=-float(s))
            elif s % 3 == 1:
                run.step(b=-float(s), a=value)
            else:
                run.step(a=value, c=s + 0.5)  # the slower path, by other names
    run.finish()
    snap = retune.load("tensors", store=store_url)
    for name, expected in (("a", float), ("b", lambda s: -float(s)), ("c", lambda s: s + 0.5)):
        series = snap.metric(name)
        wrong = [
            (step, value)
            for step, value in zip(series.steps.tolist(), series.values.tolist(), strict=True)
            if value != expected(step)
        ]
        assert wrong == [], f"{name}: {len(wrong)} wrong, e.g. {wrong[:3]}"
    assert len(snap.metric("a")) == 20_000


def test_the_writer_draining_while_training_appends_loses_and_repeats_nothing(
    store_url: str,
) -> None:
    steps = 30_000
    run = retune.init("racing", store=store_url, flush_interval=0.001, poll_interval=0.001)
    for i in range(steps):
        run.step(loss=float(i), acc=-float(i))
        if i % 1000 == 999:
            run.log(extra=float(i))  # another group at the same step
    run.finish()
    snap = retune.load("racing", store=store_url)
    loss, acc, extra = snap.metric("loss"), snap.metric("acc"), snap.metric("extra")
    assert loss.steps.tolist() == list(range(1, steps + 1))
    assert loss.values.tolist() == [float(i) for i in range(steps)]
    assert acc.values.tolist() == [-float(i) for i in range(steps)]
    assert extra.steps.tolist() == list(range(1000, steps + 1, 1000))


def test_points_belong_to_the_node_they_were_logged_on(store_url: str) -> None:
    from retune.control import submit

    run = retune.init("nodes", store=store_url, flush_interval=3600)
    run.tunable("clip", 1.0, bounds=(0, None))
    for i in range(5):
        run.step(loss=float(i))
    submit(run.store, run.id, "set", {"values": {"clip": 2.0}}, source="python")
    deadline = time.monotonic() + 60
    while run.node == 1:  # the poller queues it; the next step boundary applies it
        assert time.monotonic() < deadline
        run.step(loss=-1.0)
    for i in range(3):
        run.step(loss=float(i))
    run.finish()
    snap = retune.load("nodes", store=store_url)
    first, second = snap.nodes
    n1, n2 = snap.branch("n1").metric("loss"), snap.branch("n2").metric("loss")
    assert first.end_step is not None
    assert n1.steps.tolist() == list(range(1, first.end_step + 1))
    assert n2.steps.tolist()[-3:] == [second.start_step + k for k in (1, 2, 3)]
    assert n2.values.tolist()[-3:] == [0.0, 1.0, 2.0]
