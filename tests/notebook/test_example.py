"""examples/notebook.ipynb executed headless on a real kernel (nbclient + ipykernel).

One kernel runs the example as committed, then a few cells this test appends: a training
function that raises (its run must end ``crashed`` with the traceback) and a job stopped by
a real kernel interrupt (SIGINT from the kernel manager while the kernel is idle). The
assertions read the store from this process: what the notebook's cells did must be there
(commands with source ``notebook``, applied at recorded steps, a new branch, ``stopped``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("sklearn")
pytest.importorskip("torch")

from retune.store import open_store  # noqa: E402

# the module's kernel runs the whole notebook once (its first test pays for it)
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "notebook.ipynb"

CRASH = """
def broken(run):
    for _ in range(5):
        run.step(loss=1.0)
    raise ValueError("boom in the training thread")

crash_run = retune.init("notebook-crash")
crash_job = crash_run.start(broken)
print("crash job:", crash_job.wait(60))
"""

INTERRUPTED = """
def forever(run):
    while True:
        run.step(loss=0.5)
        time.sleep(0.002)

idle_run = retune.init("notebook-interrupt")
idle_job = idle_run.start(forever)
idle_job.wait_for(step=20)
"""

AFTER_INTERRUPT = """
try:
    state = idle_job.wait(60)
except KeyboardInterrupt:  # the signal landed as this cell started: the job stops all the same
    state = idle_job.wait(60)
print("interrupted job:", state, idle_job.interrupted)
"""


BUSY = """
busy_run = retune.init("notebook-busy")
busy_job = busy_run.start(forever)
busy_job.wait(120)  # the test interrupts the kernel while this cell waits
"""

AFTER_BUSY = """
print("busy job:", busy_job.wait(60), busy_job.interrupted)
"""


async def _interrupt_while_running(client: Any, cell: Any, index: int, store_url: str) -> None:
    """Run ``cell`` and, once its job has trained (its steps are in the store), interrupt
    the kernel while the cell is still running."""
    import asyncio
    import time

    running = asyncio.ensure_future(client.async_execute_cell(cell, index))
    deadline = time.monotonic() + 120
    while True:
        with open_store(store_url) as store:
            busy = store.list_runs(name="notebook-busy")
        if busy and busy[0].step >= 10:
            break
        assert time.monotonic() < deadline and not running.done(), "the busy job never trained"
        await asyncio.sleep(0.1)
    await client.km.interrupt_kernel()
    await running


def _cell(source: str, **metadata: Any) -> Any:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata.update(metadata)
    return cell


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("notebook")
    store_url = f"sqlite:///{work / 'retune.db'}"
    nb = nbformat.read(EXAMPLE, as_version=4)
    for cell in nb.cells:
        assert not cell.get("outputs"), "the example is committed without outputs"
    nb.cells += [
        _cell(CRASH),
        _cell(INTERRUPTED),
        _cell(AFTER_INTERRUPT, retune_interrupt_before=True),
        _cell(BUSY, retune_interrupt_during=True, tags=["raises-exception"]),
        _cell(AFTER_BUSY),
    ]
    env = {**os.environ, "RETUNE_STORE": store_url, "PYTHONPATH": str(ROOT)}
    client = nbclient.NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )
    with client.setup_kernel(env=env, cwd=str(work)):
        for index, cell in enumerate(nb.cells):
            if cell.metadata.get("retune_interrupt_before"):
                # SIGINT to the kernel (its kernelspec's interrupt mode), while it is idle
                nbclient.util.run_sync(client.km.interrupt_kernel)()
            if cell.metadata.get("retune_interrupt_during"):
                nbclient.util.run_sync(_interrupt_while_running)(client, cell, index, store_url)
            else:
                client.execute_cell(cell, index)
    return {"nb": nb, "store": store_url, "work": work}


def _outputs(nb: Any, marker: str) -> list[Any]:
    for cell in nb.cells:
        if cell.cell_type == "code" and marker in cell.source:
            return list(cell.outputs)
    raise AssertionError(f"no cell with {marker!r}")


def _text(outputs: list[Any]) -> str:
    parts = []
    for out in outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def test_cells_steer_the_background_training(executed: dict[str, Any]) -> None:
    with open_store(executed["store"], create=False) as store:
        run = store.get_run("digits-notebook")
        commands = {c.kind: c for c in store.list_commands(run.id)}
        nodes = store.list_nodes(run.id)
        checkpoints = store.list_checkpoints(run.id)
    assert run.status == "stopped"
    assert set(commands) == {"set", "restore", "stop"}
    for command in commands.values():
        assert command.source == "notebook" and command.status == "applied", command
        assert command.applied_step is not None
    changed, restored = commands["set"], commands["restore"]
    assert changed.applied_step is not None and restored.applied_step is not None
    assert changed.payload["values"] == {"lr": 5e-4}
    # a node per change: n2 (the set) and n3 (the restore) both grow from the root
    assert [(n.id, n.parent, n.change_kind) for n in nodes] == [
        (1, None, "start"),
        (2, 1, "set"),
        (3, 1, "restore"),
    ]
    assert nodes[1].start_step == changed.applied_step and nodes[1].diff["lr"] == [2e-3, 5e-4]
    assert nodes[2].diff["weight_decay"] == [1e-4, 1e-3]
    assert nodes[2].start_step == restored.applied_step <= changed.applied_step
    assert run.step > changed.applied_step + 120  # the training went on while cells ran
    assert any(c.reason == "stop" for c in checkpoints)  # a clean stop checkpoints
    printed = _text(_outputs(executed["nb"], "changed = run.set"))
    assert f"at step {changed.applied_step} (node n2, source notebook)" in printed


def test_cells_show_hp_job_chart_tree_and_report(executed: dict[str, Any]) -> None:
    nb = executed["nb"]
    (hp,) = [o for o in _outputs(nb, "run.hp") if o.output_type == "execute_result"]
    table = hp.data["text/html"]
    assert "<table" in table and "weight_decay" in table
    assert re.search(r"<td>lr</td><td>0</td><td>0\.0005</td>", table), table
    (job,) = [o for o in _outputs(nb, "job = run.start") if o.output_type == "execute_result"]
    assert "application/vnd.jupyter.widget-view+json" in job.data
    assert 'class="retune-job"' in job.data["text/html"]
    (chart,) = [o for o in _outputs(nb, "run.plot(") if o.output_type == "execute_result"]
    assert "application/vnd.jupyter.widget-view+json" in chart.data
    (tree,) = [o for o in _outputs(nb, "plot_tree") if o.output_type == "execute_result"]
    svg = tree.data.get("image/svg+xml") or tree.data["text/html"]
    assert len(re.findall(r'class="rt-node[^"]*" data-node="', svg)) == 3
    (stop,) = [o for o in _outputs(nb, "job.stop()") if o.output_type == "execute_result"]
    assert stop.data["text/plain"] == "'stopped'"
    report = executed["work"] / "digits-report.html"
    assert report.exists() and "digits-notebook" in report.read_text(encoding="utf-8")


def test_a_training_function_that_raises_crashes_its_run(executed: dict[str, Any]) -> None:
    assert "crash job: crashed" in _text(_outputs(executed["nb"], "crash_job = "))
    with open_store(executed["store"], create=False) as store:
        run = store.get_run("notebook-crash")
    assert run.status == "crashed" and run.step == 5
    assert run.error is not None
    assert "Traceback" in run.error and "ValueError: boom in the training thread" in run.error
    assert ", in broken" in run.error  # the user's own frame


def test_a_kernel_interrupt_stops_the_job_at_a_step_boundary(executed: dict[str, Any]) -> None:
    assert "interrupted job: stopped True" in _text(_outputs(executed["nb"], "idle_job.wait(60)"))
    with open_store(executed["store"], create=False) as store:
        run = store.get_run("notebook-interrupt")
        checkpoints = store.list_checkpoints(run.id)
    assert run.status == "stopped" and run.error == "interrupted (kernel interrupt)"
    assert run.step >= 20
    # stopped at a boundary: the stop checkpoint holds the last step
    assert [c.step for c in checkpoints if c.reason == "stop"] == [run.step]


def test_an_interrupt_during_a_cell_stops_the_job_and_the_cell(executed: dict[str, Any]) -> None:
    nb = executed["nb"]
    (error,) = [o for o in _outputs(nb, "busy_job.wait(120)") if o.output_type == "error"]
    assert error.ename == "KeyboardInterrupt"  # the cell was interrupted as usual
    assert "busy job: stopped True" in _text(_outputs(nb, "busy_job.wait(60)"))
    with open_store(executed["store"], create=False) as store:
        run = store.get_run("notebook-busy")
    assert run.status == "stopped" and run.error == "interrupted (kernel interrupt)"
