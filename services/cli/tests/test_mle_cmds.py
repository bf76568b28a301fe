"""``flywheel eval``'s ML-engineering table, from an Evaluation message as the orchestrator fills it."""

from __future__ import annotations

from rich.console import Console

from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import mle_pb2
from flywheel_cli.mle import ml_table


def test_ml_table_shows_each_task_and_the_model_total() -> None:
    task = mle_pb2.MlTaskMetrics(
        task_id="two-moons",
        metric="accuracy",
        maximize=True,
        episodes=2,
        valid_episodes=1,
        best_heldout=0.952,
        mean_normalised=0.5,
        baseline_score=0.516,
        reference_score=0.952,
        mean_nodes=3.0,
    )
    task.mean_wall_time.FromSeconds(12)
    model = mle_pb2.MlModelMetrics(
        model="m", episodes=2, valid_fraction=0.5, mean_normalised=0.5, mean_nodes=3.0, tasks=[task]
    )
    empty = mle_pb2.MlTaskMetrics(task_id="sms-spam", metric="accuracy", maximize=True, episodes=1)
    model.tasks.append(empty)
    assert ml_table(epb.Evaluation()) is None
    table = ml_table(epb.Evaluation(ml_metrics=[model]))
    assert table is not None
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    assert (
        "two-moons │ accuracy (max) │    0.516 │     0.952 │         0.952 │       0.50 │   1/2 │   3.0 │ 12.0 s"
        in text
    )
    assert "sms-spam  │ accuracy (max) │        0 │         0 │             - │" in text
    assert "all" in text and "50%" in text
