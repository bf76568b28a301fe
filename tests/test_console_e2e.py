"""The web console in a real browser, on a real stack with a finished loop and a live fine-tune.

Every service runs as shipped (`flywheel_cli.stack.Stack`: NATS, sandbox, trajectory store,
dataset builder, trainer, orchestrator, model server, gateway) on a tiny random model and the
`mini` fixture suite. One loop runs to its end, which leaves a finished run, dataset, fine-tune
job, adapter, evaluation and (when promoted) alias history; then a second fine-tune is started
with a delay after every step so that it is still running while the browser watches it.

Debian's Chromium, driven by Playwright (its own browser download cannot work here), checks that
the key is required, that a wrong key is refused, that every page loads with no console error and
shows its resource, and that a live job's loss chart gains points while the test watches. It
saves screenshots of the main pages (to ``$FLYWHEEL_CONSOLE_SCREENSHOTS`` when set: that is how
the README's pictures are made).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc, run_pb2
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_cli.stack import Stack
from flywheel_common import auth
from flywheel_common.events import NatsSettings
from flywheel_testing.stack import address, agent_base_model, running_stack

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "services" / "orchestrator" / "tests" / "fixtures" / "mini"
BASE = "tiny-agent"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Read at import: the stack fixture clears every FLYWHEEL_ variable before the test body runs.
SCREENSHOTS = os.environ.get("FLYWHEEL_CONSOLE_SCREENSHOTS")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nats_settings: NatsSettings) -> Iterator[Stack]:
    with running_stack(
        tmp_path / "state",
        monkeypatch,
        nats_settings.url,
        base=BASE,
        base_folder=agent_base_model(tmp_path / "base", MINI),
        suite_dirs=[MINI],
        # Each optimizer step waits this long: the live job stays RUNNING while the browser watches.
        extra_env={"FLYWHEEL_TRAINER_STEP_DELAY_S": "0.5"},
    ) as s:
        yield s


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(SCREENSHOTS or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def hyperparameters(steps: int) -> trpb.Hyperparameters:
    return trpb.Hyperparameters(
        max_steps=steps,
        batch_size=1,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        max_seq_length=1024,
        lora=trpb.LoraConfig(rank=4, alpha=8),
    )


async def finished_loop(stack: Stack) -> lpb.Loop:
    loop = lpb.Loop(
        suite="mini",
        base_model=BASE,
        teacher_kind=tpb.TEACHER_KIND_REFERENCE,
        adapter_name="console",
        episode=run_pb2.EpisodeSettings(
            limits=run_pb2.EpisodeLimits(max_iterations=2, max_consecutive_parse_errors=2),
            sampling=common_pb2.SamplingParams(temperature=0, max_tokens=8),
        ),
        dataset_split=dpb.SplitConfig(train_ratio=1.0),
        hyperparameters=hyperparameters(3),
        gate=lpb.PromotionGate(metric=lpb.GATE_METRIC_PARSE_ERRORS_PER_EPISODE, margin=0.0),
    )
    async with auth.channel(address(stack, "orchestrator")) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        created = (await stub.CreateLoop(opb.CreateLoopRequest(loop=loop, request_id="console-1"))).loop
        final = None
        async for update in stub.WatchLoop(opb.WatchLoopRequest(loop_id=created.id), timeout=420):
            final = update.loop
        assert final is not None and final.state == common_pb2.JOB_STATE_SUCCEEDED, final
        return final


async def live_job(stack: Stack, dataset_id: str) -> str:
    async with auth.channel(address(stack, "trainer-svc")) as ch:
        stub = trainer_pb2_grpc.TrainerServiceStub(ch)
        job = trpb.FineTuneJob(
            base_model=BASE,
            dataset_id=dataset_id,
            method=trpb.FINE_TUNE_METHOD_SFT,
            hyperparameters=hyperparameters(200),
            adapter_name="console-live",
        )
        created = (await stub.CreateFineTuneJob(trpb.CreateFineTuneJobRequest(job=job))).job
        deadline = time.monotonic() + 240
        while True:  # until it logged its first step
            got = (await stub.GetFineTuneJob(trpb.GetFineTuneJobRequest(job_id=created.id))).job
            assert got.state not in (common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_SUCCEEDED), got
            if got.progress.step >= 1:
                return created.id
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.2)


def artefact(loop: lpb.Loop, stage: int, kind: int) -> str:
    return next(a.id for s in loop.stages if s.stage == stage for a in s.artefacts if a.kind == kind)


@pytest.mark.slow
async def test_console_pages_live_chart_and_key(stack: Stack, shots: Path) -> None:
    from playwright.async_api import async_playwright, expect

    loop = await finished_loop(stack)
    run_id = artefact(loop, lpb.LOOP_STAGE_ROLLOUTS, common_pb2.RESOURCE_KIND_RUN)
    dataset_id = artefact(loop, lpb.LOOP_STAGE_DATASET, common_pb2.RESOURCE_KIND_DATASET)
    job_id = artefact(loop, lpb.LOOP_STAGE_FINE_TUNE, common_pb2.RESOURCE_KIND_FINE_TUNE_JOB)
    eval_id = artefact(loop, lpb.LOOP_STAGE_EVALUATION, common_pb2.RESOURCE_KIND_EVALUATION)
    running_id = await live_job(stack, dataset_id)
    base = f"http://{address(stack, 'gateway')}"
    errors: list[str] = []

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1360, "height": 900})
            page = await context.new_page()
            page.on(
                "console", lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None
            )
            page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))

            # The key is required: pages send the browser to sign in; the API answers 401.
            await page.goto(f"{base}/console/runs")
            assert page.url.startswith(f"{base}/console/login?next=")
            api = await context.request.get(f"{base}/console/api/stream/job/{job_id}")
            assert api.status == 401 and (await api.json())["error"]["code"] == "missing_api_key"
            await page.fill("#key", "sk-not-the-key")
            await page.click("#sign-in")
            assert "not accepted" in (await page.text_content("#login-error") or "")
            errors.clear()  # the refused sign-in's 401 is the browser's own console line: expected
            await page.fill("#key", stack.gateway_key())
            await page.click("#sign-in")
            await page.wait_for_url(f"{base}/console/runs")

            async def visit(path: str, shot: str | None = None) -> None:
                reply = await page.goto(f"{base}{path}")
                assert reply is not None and reply.status == 200, (path, reply and reply.status)
                await page.wait_for_load_state("domcontentloaded")
                if shot:
                    await page.screenshot(path=str(shots / f"{shot}.png"), full_page=True)

            async def points(selector: str, at_least: int, timeout_s: float = 60) -> int:
                """Poll the number of points a chart has drawn (circles of its lines, bars of a bar
                chart), by locators: no page-side eval, which the console's CSP forbids."""
                deadline = time.monotonic() + timeout_s
                while True:
                    got = await page.locator(f"{selector} circle, {selector} rect.bar").count()
                    if got >= at_least:
                        return got
                    assert time.monotonic() < deadline, (selector, got, at_least)
                    await asyncio.sleep(0.25)

            await visit("/console/", "overview")
            await visit("/console/runs")
            assert await page.locator(f"#runs a[href='/console/runs/{run_id}']").count() == 1
            await visit(f"/console/runs/{run_id}", "run")
            episodes = page.locator("#episodes tbody a")
            assert await episodes.count() == 2  # the mini suite's two TRAIN tasks
            await episodes.first.click()
            await page.wait_for_selector("#conversation li.step")
            assert await page.locator("#conversation li.role-assistant").count() >= 1
            await page.screenshot(path=str(shots / "trajectory.png"), full_page=True)

            await visit("/console/evaluations")
            await visit(f"/console/evaluations/{eval_id}", "evaluation")
            assert await page.locator("#model-metrics tbody tr").count() == 2
            assert await points("#chart-pass-rate", 2) == 2

            await visit("/console/loops")
            await visit(f"/console/loops/{loop.id}", "loop")
            assert await page.locator("#stages li").count() == len(loop.stages)
            assert await page.locator("#gate").count() == 1

            await visit("/console/datasets")
            await visit(f"/console/datasets/{dataset_id}", "dataset")
            assert await page.locator("#preview li").count() >= 1

            await visit("/console/jobs")
            await visit(f"/console/jobs/{job_id}")
            await points("#chart-loss", 3)  # the finished job's history, from its adapter's manifest
            await visit("/console/adapters", "adapters")
            assert await page.locator("#adapters code", has_text="ft/console-v1").count() == 1
            await visit("/console/aliases")
            await visit("/console/skills")  # none here (tests/test_skillopt.py runs optimisations)

            # A live job: its loss chart gains points while we watch, without a reload.
            await visit(f"/console/jobs/{running_id}")
            first = await points("#chart-loss", 1)
            await points("#chart-loss", first + 3, timeout_s=120)
            await page.screenshot(path=str(shots / "job-live.png"), full_page=True)
            assert page.url == f"{base}/console/jobs/{running_id}"  # no reload happened

            # Cancel from the console (the master key may): the page ends up showing it cancelled.
            await page.click("button.cancel")
            await expect(page.locator("[data-live=state] .state")).to_have_text("cancelled", timeout=120_000)
        finally:
            await browser.close()
    assert not errors, errors
    saved = set(await asyncio.to_thread(os.listdir, shots))
    assert saved >= {"overview.png", "evaluation.png", "job-live.png", "loop.png"}, saved
