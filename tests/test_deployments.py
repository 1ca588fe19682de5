"""deployments/: prefect.yaml loads and its entrypoints resolve to the right flows, with
the intended schedules on the `dsrflow` work pool; `prefect deploy` takes it as written;
`serve_all` serves the same deployments; the automations apply idempotently."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pytest
import yaml

from deployments import serve as serve_module
from deployments.serve import (
    AUTOMATIONS_FILE,
    PREFECT_FILE,
    ROOT,
    DeploymentConfigError,
    apply_automations,
    deployment_specs,
    load_automations,
    runner_deployments,
)

# deployment name -> (entrypoint, flow name, schedule)
EXPECTED: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "process-requests": ("flows/request.py:process_requests", "process-requests", None),
    "check-partners": ("flows/partners.py:check_partners", "check-partners",
                       {"interval": 900, "timezone": "Asia/Shanghai"}),
    "deadline-report": ("flows/deadlines.py:deadline_report", "deadline-report",
                        {"cron": "0 * * * *", "timezone": "Asia/Shanghai"}),
    "confirm-partner": ("flows/partners.py:confirm_partner", "confirm-partner", None),
    "expire-packages": ("flows/packages.py:expire_packages", "expire-packages",
                        {"cron": "30 * * * *", "timezone": "Asia/Shanghai"}),
    "resume-requests": ("flows/resume.py:resume_requests", "resume-requests",
                        {"interval": 600, "timezone": "Asia/Shanghai"}),
    "retention-sweep": ("flows/retention.py:retention_sweep", "retention-sweep",
                        {"cron": "0 3 * * *", "timezone": "Asia/Shanghai"}),
}
if (ROOT / "flows" / "intake.py").exists():
    EXPECTED["intake"] = ("flows/intake.py:intake", "intake",
                          {"interval": 300, "timezone": "Asia/Shanghai"})


def _doc() -> dict[str, Any]:
    doc = yaml.safe_load(PREFECT_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


def test_prefect_yaml_is_what_prefect_deploy_reads() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(_doc())
    assert {d.name for d in model.deployments} == set(EXPECTED)
    for deployment in model.deployments:
        assert deployment.work_pool is not None and deployment.work_pool.name == "dsrflow"
    # Flow code is found on the worker through $DSRFLOW_ROOT, resolved when a run starts.
    assert model.pull == [{"prefect.deployments.steps.set_working_directory":
                           {"directory": "{{ $DSRFLOW_ROOT }}"}}]


def test_every_entrypoint_resolves_to_its_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)  # `prefect deploy` resolves entrypoints from where it runs
    for spec in deployment_specs():
        entrypoint, flow_name, _ = EXPECTED[spec["name"]]
        assert spec["entrypoint"] == entrypoint
        flow: Flow[..., Any] = load_flow_from_entrypoint(spec["entrypoint"])
        assert isinstance(flow, Flow)
        assert flow.name == flow_name


def test_schedules_are_the_intended_ones() -> None:
    for spec in deployment_specs():
        schedules = spec.get("schedules") or []
        expected = EXPECTED[spec["name"]][2]
        assert schedules == ([expected] if expected else []), spec["name"]


def test_serve_all_serves_the_same_deployments(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    import prefect
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    by_name = {d.name: d for d in runner_deployments()}
    assert set(by_name) == set(EXPECTED)
    [hourly] = by_name["deadline-report"].schedules or []
    assert isinstance(hourly.schedule, CronSchedule)
    assert (hourly.schedule.cron, hourly.schedule.timezone) == ("0 * * * *", "Asia/Shanghai")
    [quarterly] = by_name["check-partners"].schedules or []
    assert isinstance(quarterly.schedule, IntervalSchedule)
    assert quarterly.schedule.interval == timedelta(minutes=15)
    assert not by_name["process-requests"].schedules
    assert by_name["deadline-report"].entrypoint == "flows.deadlines.deadline_report"
    for name, deployment in by_name.items():
        assert deployment.flow_name == EXPECTED[name][1]

    served: list[Any] = []
    monkeypatch.setattr(prefect, "serve", lambda *ds, **kw: served.extend(ds))
    monkeypatch.delenv("DSRFLOW_CONFIG", raising=False)
    config = tmp_path / "dsrflow.yaml"
    serve_module.serve_all(config=config)
    assert {d.name for d in served} == set(EXPECTED)
    assert os.environ["DSRFLOW_CONFIG"] == str(config.resolve())  # for the run subprocesses


def test_prefect_deploy_takes_the_file_as_written(prefect_server: list[Path]) -> None:
    """`prefect deploy --all --prefect-file deployments/prefect.yaml` from the repository
    root, against the test server."""
    import prefect.settings
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name="dsrflow", type="process"))
    env = {**os.environ, "PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value())}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy", "--all",
         "--prefect-file", "deployments/prefect.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with get_client(sync_client=True) as client:
        deployed = {name: client.read_deployment_by_name(f"{flow_name}/{name}")
                    for name, (_, flow_name, _) in EXPECTED.items()}
        # Gone again (with the runs their schedules made) before the other tests list runs.
        for deployment in deployed.values():
            client.delete_deployment(deployment.id)
    for name, deployment in deployed.items():
        entrypoint, _, schedule = EXPECTED[name]
        assert deployment.entrypoint == entrypoint
        assert deployment.work_pool_name == "dsrflow"
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory":
             {"directory": "{{ $DSRFLOW_ROOT }}"}}
        ]
        schedules = [s.schedule for s in deployment.schedules]
        if schedule is None:
            assert schedules == []
        elif "cron" in schedule:
            [cron] = schedules
            assert (getattr(cron, "cron", None), getattr(cron, "timezone", None)) == (
                schedule["cron"], schedule["timezone"])
        else:
            [interval] = schedules
            assert getattr(interval, "interval", None) == timedelta(
                seconds=schedule["interval"])


def test_automations_apply_once_by_name(prefect_server: list[Path]) -> None:
    from prefect import get_client
    from prefect.blocks.notifications import SlackWebhook

    block = SlackWebhook(url="https://hooks.slack.com/services/T000/B000/XXXX")  # type: ignore[arg-type]
    block_id = cast(UUID, block.save("dsrflow-alerts-test", overwrite=True))
    first = apply_automations(notification_block="slack-webhook/dsrflow-alerts-test")
    try:
        _check_applied(first, block_id)
    finally:  # no notification attempts from the other tests' events
        with get_client(sync_client=True) as client:
            for name in ("dsrflow-deadline-alerts", "dsrflow-deadline-unknown",
                         "dsrflow-request-failed"):
                for automation in client.read_automations_by_name(name):
                    client.delete_automation(automation.id)


def _check_applied(first: dict[str, UUID], block_id: UUID) -> None:
    from prefect import get_client

    assert set(first) == {"dsrflow-deadline-alerts", "dsrflow-deadline-unknown",
                          "dsrflow-request-failed"}
    assert apply_automations(notification_block=str(block_id)) == first  # updated in place

    with get_client(sync_client=True) as client:
        # A duplicate made by hand (say, `prefect automation create` run twice) is folded.
        [extra] = load_automations(notification_block=block_id)[:1]
        client.create_automation(extra)
    first = apply_automations(notification_block=block_id)
    assert apply_automations(notification_block=block_id) == first

    with get_client(sync_client=True) as client:
        for name, automation_id in first.items():
            [found] = client.read_automations_by_name(name)
            assert found.id == automation_id
            assert found.enabled
            [action] = found.actions
            assert getattr(action, "block_document_id", None) == block_id
        deadline = client.read_automations_by_name("dsrflow-deadline-alerts")[0]
        assert deadline.trigger.expect == {  # type: ignore[union-attr]
            "dsr.request.at_risk", "dsr.request.overdue"}
        unknown = client.read_automations_by_name("dsrflow-deadline-unknown")[0]
        assert unknown.trigger.expect == {  # type: ignore[union-attr]
            "dsr.request.deadline_unknown"}
        failed = client.read_automations_by_name("dsrflow-request-failed")[0]
        assert failed.trigger.expect == {"dsr.request.failed"}  # type: ignore[union-attr]


def test_a_missing_notification_block_is_a_clear_error(prefect_server: list[Path]) -> None:
    with pytest.raises(DeploymentConfigError, match="not found"):
        load_automations(AUTOMATIONS_FILE, notification_block="slack-webhook/no-such-block")
    with pytest.raises(DeploymentConfigError, match="slug"):
        load_automations(AUTOMATIONS_FILE, notification_block="no-slash")


def test_serve_without_a_queue_leaves_intake_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cli_runtime: None
) -> None:
    """Intake reads the ticket queue: with no `queue:` configured it would fail every five
    minutes, so `dsrflow serve` does not serve it, and says so."""
    import prefect

    from tests import sqlworld
    from tests.helpers import cli_config, invoke

    served: list[Any] = []
    monkeypatch.setattr(prefect, "serve", lambda *ds, **kw: served.extend(ds))
    _, url = sqlworld.sqlite_world(tmp_path, 1, 2)
    config = cli_config(tmp_path, sqlworld.datamap_doc(url))
    result = invoke("serve", "--port", "0", "--config", config)
    assert result.exit_code == 0, result.output
    assert "intake deployment is not served" in result.output
    assert {d.name for d in served} == set(EXPECTED) - {"intake"}
