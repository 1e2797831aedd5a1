"""The benchmarks' own checks: what they verify after timing really catches wrong work, and
the doc's figures are rendered from the results. No benchmark is timed here."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> Any:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the scripts import their _common helpers
    if name == "_common":
        return importlib.import_module("_common")  # the very module the scripts import
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


common = _load("_common")
report = _load("report")


def test_bitwise_difference_finds_one_flipped_bit_and_nothing_in_equal_states() -> None:
    weights = {"w": torch.randn(4, 3), "n": torch.tensor(3)}
    saved: dict[str, Any] = {"model": weights, "groups": [{"lr": 0.1}]}
    same = {"model": {k: v.clone() for k, v in weights.items()}, "groups": [{"lr": 0.1}]}
    assert common.bitwise_difference(saved, same) is None
    w = weights["w"].clone()
    w.view(torch.int32)[2, 1] ^= 1  # the lowest mantissa bit of one element
    flipped = {"model": {**weights, "w": w}, "groups": [{"lr": 0.1}]}
    assert common.bitwise_difference(saved, flipped) == "state['model']['w']: tensor bytes differ"
    assert common.bitwise_difference(0.0, -0.0) is not None
    assert common.bitwise_difference(float("nan"), float("nan")) is None
    assert common.bitwise_difference((1, 2), [1, 2]) is not None
    nan = torch.tensor([float("nan")])
    assert common.bitwise_difference(nan, nan.clone()) is None


def test_logging_check_rejects_a_missing_or_altered_point() -> None:
    logging_overhead = _load("logging_overhead")
    good = logging_overhead.expected_points(50, 1)
    assert logging_overhead._check("x", good, 50, 1) == 150
    altered = {k: (steps, list(values)) for k, (steps, values) in good.items()}
    altered["acc"][1][7] += 1e-12
    with pytest.raises(SystemExit, match="1 wrong acc values"):
        logging_overhead._check("x", altered, 50, 1)
    dropped = {k: (steps[:-1], values[:-1]) for k, (steps, values) in good.items()}
    with pytest.raises(SystemExit, match="stored 49 loss points"):
        logging_overhead._check("x", dropped, 50, 1)
    float32 = {k: (s, [logging_overhead._as_float32(v) for v in vs]) for k, (s, vs) in good.items()}
    assert logging_overhead._check("tb", float32, 50, 1, float32=True) == 150
    with pytest.raises(SystemExit):  # float32 values are not the logged doubles
        logging_overhead._check("tb", float32, 50, 1)


class _Command:
    def __init__(self, id: int, status: str, reason: str | None = None) -> None:
        self.id, self.status, self.reason = id, status, reason


def test_command_audit_counts_every_outcome_and_flags_wrong_ones() -> None:
    latency = _load("command_latency")
    sent = [{"id": 1, "valid": True}, {"id": 2, "valid": True}, {"id": 3, "valid": False},
            {"id": 4, "valid": False}, {"id": None, "valid": False, "refused": "out of bounds"}]  # fmt: skip
    commands = [_Command(1, "applied"), _Command(2, "rejected", "no such tunable"),
                _Command(3, "rejected", "below 0"), _Command(4, "applied")]  # fmt: skip
    audit = latency._audit(commands, sent)
    assert audit["outcome"] == {
        "valid": {"applied": 1, "rejected": 1, "other": 0},
        "invalid": {"applied": 1, "rejected": 2, "other": 0},
    }
    assert audit["problems"] == [
        "valid command 2: rejected no such tunable",
        "invalid command 4: applied",
    ]


def test_checkpoint_benchmark_verifies_every_restore_and_stops_on_a_wrong_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("safetensors", reason="the .[bench] extra is not installed")
    checkpoint_io = _load("checkpoint_io")
    result = checkpoint_io.bench_io(tmp_path, 2, 32, 1)
    assert result["verified_restores"] == dict.fromkeys(checkpoint_io.RESTORES, 2)

    import retune.checkpoint

    real = retune.checkpoint.decode_state

    def off_by_one_bit(*args: Any, **kwargs: Any) -> Any:
        state = real(*args, **kwargs)
        state["model"]["0.bias"].view(torch.int32)[0] ^= 1
        return state

    monkeypatch.setattr(retune.checkpoint, "decode_state", off_by_one_bit)
    (tmp_path / "again").mkdir()
    with pytest.raises(SystemExit, match=r"retune restored a different state: .*0\.bias"):
        checkpoint_io.bench_io(tmp_path / "again", 1, 32, 1)


def _doc(tmp_path: Path) -> Path:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# Title\nprose before\n<!-- bench:command_latency -->\nold 12.3 ms\n"
        "<!-- /bench:command_latency -->\nprose after\n",
        encoding="utf-8",
    )
    return doc


COMMANDS = {
    "benchmark": "command_latency", "quick": True, "recorded_at": 0.0, "machine": "cpu, 2 cores",
    "settings": {"poll_ms": 50.0}, "sent": 3, "step_ms": 5.0, "bound_ms": 55.0,
    "outcome": {"valid": {"applied": 2, "rejected": 0, "other": 0},
                "invalid": {"applied": 0, "rejected": 1, "other": 0}},
    "problems": [], "latency_ms": {"min": 1.0, "p50": 20.5, "p90": 30.0, "p99": 40.0, "max": 41.0},
    "rejection_ms": {}, "bare_step_ms": 5.0, "retune_step_ms": 5.05, "overhead_pct": 1.0,
}  # fmt: skip


def test_report_renders_between_the_markers_and_keeps_the_prose(tmp_path: Path) -> None:
    import json

    doc = _doc(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    (results / "command_latency.json").write_text(json.dumps(COMMANDS), encoding="utf-8")
    args = ["--results", str(results), "--doc", str(doc)]
    assert report.main([*args, "--check"]) == 1  # stale
    assert report.main(args) == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Title\nprose before\n<!-- bench:command_latency -->\n")
    assert text.endswith("<!-- /bench:command_latency -->\nprose after\n")
    assert "old 12.3 ms" not in text
    assert "| 2 valid commands, submit -> applied | 1.0 | 20.5 | 30.0 | 40.0 | 41.0 |" in text
    assert "quick settings" in text
    assert report.main([*args, "--check"]) == 0  # rendering is idempotent


def test_report_refuses_a_doc_without_the_block(tmp_path: Path) -> None:
    with pytest.raises(report.ReportError, match="no <!-- bench:dashboard -->"):
        report.render("# no markers\n", {"dashboard": {}})


def test_checkpoint_stall_verification_catches_a_late_or_altered_state() -> None:
    stall = _load("checkpoint_stall")
    trainer = stall.Trainer(width=8, layers=2, step_ms=0.01)
    trainer.step(5)
    saved = stall._expected(trainer, 5)
    stall._same(trainer.state_dict(), saved, "state")  # the bias holds 5: equal
    trainer.step(6)  # what a save reading the live tensors after step 6 would hold
    with pytest.raises(SystemExit, match=r"\['0\.bias'\] differs"):
        stall._same(trainer.state_dict(), saved, "state")


def test_export_benchmark_counts_what_it_wrote_and_renders(tmp_path: Path) -> None:
    export_bench = _load("export")
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    run_id = export_bench.build_store(url, 4_000)
    from retune.export import export
    from retune.store import open_store

    with open_store(url) as store:
        assert export(store, run_id, "csv", dest=str(tmp_path / "csv")).points == 4_000
    export_bench._check("csv", tmp_path / "csv", 4_000)
    with pytest.raises(SystemExit, match="read back 4000 points, expected 4001"):
        export_bench._check("csv", tmp_path / "csv", 4_001)
    one = {"seconds": 2.0, "peak_mb": 4.0, "points": 1_000_000}
    naive = {"seconds": 4.0, "peak_mb": 100.0, "points": 1_000_000}
    block = {k: one for k in ("csv", "parquet", "tensorboard")} | {
        "naive-csv": naive, "naive-parquet": naive}  # fmt: skip
    result = {
        "machine": "m", "recorded_at": 0, "points": 1_000_000, "mlflow_points": 1_000,
        "results": {"full": block, "quarter": block, "mlflow": {**one, "points": 1_000}},
        "summary": {"csv_vs_naive_memory": 25.0, "parquet_vs_naive_memory": 25.0,
                    "csv_vs_naive_time": 2.0, "parquet_vs_naive_time": 2.0},
    }  # fmt: skip
    text = report.render_export(result)
    assert (
        "| `retune export --to csv` (streamed) | 1,000,000 | 2.00 | 500,000 | 4.0 | 4.0 |" in text
    )
    assert "**25x less**" in text


@pytest.mark.parametrize(
    ("interval", "verdict"),
    [((1.0, 2.5), "target under 3% on a ~20 ms step, met when the whole interval is under it: met)"),
     ((3.5, 5.0), "**not met**)"),
     ((0.5, 4.0), "**not shown**"),  # the interval straddles the target: undecided
     ((3.0, 12.0), "**not met**)")],
)  # fmt: skip
def test_the_distributed_verdict_says_met_not_met_or_not_shown(
    interval: tuple[float, float], verdict: str
) -> None:
    import json

    recorded = Path(__file__).parents[1] / "benchmarks" / "results" / "distributed_overhead.json"
    result = json.loads(recorded.read_text(encoding="utf-8"))
    result["overhead_ci_pct"] = list(interval)
    result["overhead_pct"] = sum(interval) / 2
    result["problems"] = []
    text = report.render_distributed_overhead(result)
    assert verdict in text
    assert "Every command was applied on both ranks" in text
    failed = report.render_distributed_overhead({**result, "problems": ["#3 on rank 1 only"]})
    assert "**1 commands were not applied on every rank**: #3 on rank 1 only" in failed


def test_the_distributed_interval_holds_the_median_and_narrows_with_more_rounds() -> None:
    bench = _load("distributed_overhead")
    assert bench.median_interval([0.02] * 9) == [2.0, 2.0]
    noisy = [(-1) ** i * (i % 7) / 100 + 0.02 for i in range(15)]
    low, high = bench.median_interval(noisy)
    assert low < 2.0 < high
    wider = bench.median_interval(noisy[:5])
    assert wider[1] - wider[0] > high - low
