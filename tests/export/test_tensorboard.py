"""The TensorBoard export, read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retune.export import export
from retune.store import Store, open_store
from tests.export.conftest import branch_points, build_tree_run, retune_cli

pytest.importorskip("tensorboard")


def _load(folder: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _hparams(accumulator: Any) -> dict[str, Any]:
    from tensorboard.plugins.hparams import metadata

    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    out: dict[str, Any] = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        out[name] = getattr(value, kind)
    return out


def _f32(values: list[float]) -> list[float]:
    out: list[float] = np.asarray(values, dtype=np.float32).astype(np.float64).tolist()
    return out


def _same(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, str, Path]:
    folder = tmp_path_factory.mktemp("tb")
    store = open_store(f"sqlite:///{folder / 'retune.db'}")
    run_id = build_tree_run(store)
    export(store, run_id, "tensorboard", dest=str(folder / "logs"))
    export(store, run_id, "tensorboard", dest=str(folder / "logs"))  # a re-export replaces
    return store, run_id, folder / "logs"


def test_one_folder_per_branch_with_every_point_of_its_path(board: tuple[Store, str, Path]) -> None:
    store, run_id, logs = board
    files = sorted(
        p.relative_to(logs).parent.as_posix() for p in logs.rglob("events.out.tfevents.*")
    )
    # n2 ends where n4 starts (a `set`): not a branch of its own; n1 trained on after n2/n3
    assert files == [".", "n1", "n1/n2/n4", "n1/n3"]
    for folder, node in (("n1", 1), ("n1/n2/n4", 4), ("n1/n3", 3)):
        accumulator = _load(logs / folder)
        tags = accumulator.Tags()["scalars"]
        for key in store.metric_keys(run_id):
            want = branch_points(store, run_id, node, key)
            if not want:
                assert key not in tags
                continue
            got = accumulator.Scalars(key)
            assert [e.step for e in got] == [s for s, _ in want], (folder, key)
            assert _same([e.value for e in got], _f32([v for _, v in want])), (folder, key)
    n4 = _load(logs / "n1/n2/n4").Scalars("loss")
    assert [e.step for e in n4] == list(range(1, 28))  # n1 to 10, n2 to 20, n4 on
    assert n4[0].wall_time == 1_700_000_000.5


def test_hyperparameters_in_the_hparams_plugin(board: tuple[Store, str, Path]) -> None:
    _store, _run_id, logs = board
    n3 = _hparams(_load(logs / "n1/n3"))
    assert n3["weight_decay"] == 0.0001 and n3["lr[head]"] == 0.1 and n3["clip"] == 1.0
    assert n3["branch"] == "n1/n3" and n3["node"] == "n3"
    assert n3["betas"] == "[0.9, 0.999]"
    n4 = _hparams(_load(logs / "n1/n2/n4"))
    assert n4["lr[head]"] == 0.01 and n4["clip"] == 0.5
    from tensorboard.plugins.hparams import metadata

    root = _load(logs).PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(root[metadata.EXPERIMENT_TAG])
    assert {h.name for h in experiment.hparam_infos} >= {"lr[head]", "weight_decay", "clip"}
    assert {m.name.tag for m in experiment.metric_infos} == {"loss", "accuracy", "val/top-1:acc"}
    ended = _load(logs / "n1/n3").PluginTagToContent(metadata.PLUGIN_NAME)
    assert metadata.SESSION_END_INFO_TAG in ended  # n3 closed
    running = _load(logs / "n1/n2/n4").PluginTagToContent(metadata.PLUGIN_NAME)
    assert metadata.SESSION_END_INFO_TAG not in running  # n4 still trains


def test_a_real_training_exported_from_the_cli(trained: str, tmp_path: Path) -> None:
    out = retune_cli("export", "trained", "--to", "tensorboard", str(tmp_path / "tb"),
                     "--store", trained)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "3 branches" in out.stdout
    with open_store(trained, create=False) as store:
        run_id = store.get_run("trained").id
        for folder, node in (("n1", 1), ("n1/n2", 2), ("n1/n3", 3)):
            want = branch_points(store, run_id, node, "loss")
            got = _load(tmp_path / "tb" / folder).Scalars("loss")
            assert [(e.step, e.value) for e in got] == list(
                zip([s for s, _ in want], _f32([v for _, v in want]), strict=True)
            )


def test_exports_stream_and_never_read_a_whole_metric(tmp_path: Path) -> None:
    """Every export reads points through iter_metric_chunks only (bounded memory)."""

    class NoWholeReads(type(open_store(f"sqlite:///{tmp_path / 'r.db'}"))):  # type: ignore[misc]
        def read_metric(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("an export read a whole metric")

    store = NoWholeReads(f"sqlite:///{tmp_path / 'r.db'}")
    store.ITER_PAGE = 2
    run_id = build_tree_run(store)
    summary = export(store, run_id, "tensorboard", dest=str(tmp_path / "tb"))
    assert summary.points == (30 + 6) + (12 + 14 + 4) + (12 + 12 + 7)  # n1, n1/n3, n1/n2/n4
    assert export(store, run_id, "csv", dest=str(tmp_path / "csv")).points == 73
    pytest.importorskip("pyarrow")
    assert export(store, run_id, "parquet", dest=str(tmp_path / "pq")).points == 73
    store.close()


def test_numpy_built_records_are_the_protobuf_and_crcs_tensorboard_expects() -> None:
    import struct

    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    from retune.export._tensorboard import scalar_records

    steps = np.array([0, 1, 127, 128, 300, 16_384, 2**40, -1], dtype=np.int64)
    values = np.array([0.5, math.nan, math.inf, -1.0, 3.0, 0.0, 1e-3, 2.0])
    times = 1.7e9 + np.arange(8.0) / 3
    blob = scalar_records("val/loss é", steps, values, times)
    pos, seen = 0, 0
    while pos < len(blob):
        (size,) = struct.unpack("<Q", blob[pos : pos + 8])
        assert struct.unpack("<I", blob[pos + 8 : pos + 12])[0] == masked_crc32c(
            blob[pos : pos + 8]
        )
        data = blob[pos + 12 : pos + 12 + size]
        assert struct.unpack("<I", blob[pos + 12 + size : pos + 16 + size])[0] == masked_crc32c(
            data
        )
        event = event_pb2.Event.FromString(data)
        assert (event.step, event.wall_time) == (steps[seen], times[seen])
        assert event.summary.value[0].tag == "val/loss é"
        assert _same([event.summary.value[0].simple_value], _f32([values[seen]]))
        pos += 16 + size
        seen += 1
    assert seen == 8
