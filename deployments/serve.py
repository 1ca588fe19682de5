"""Serve dsrflow's deployments without workers, and apply its automations.

`deployments/prefect.yaml` is the one definition of the deployments (names, entrypoints,
schedules, concurrency limits): `prefect deploy --all --prefect-file
deployments/prefect.yaml` registers them for workers on the `dsrflow` work pool, and
`serve_all()` reads the same file and serves them from this process with
`prefect.serve()` — what `dsrflow serve` does next to the callback endpoint.

`apply_automations()` creates or updates (matched by name) the automations in
`deployments/automations.yaml`, which turn `dsr.request.at_risk`, `.overdue`,
`.deadline_unknown` and `.failed` events into notifications.
"""

from __future__ import annotations

import importlib
import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import yaml

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events.schemas.automations import AutomationCore
    from prefect.schedules import Schedule

ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = Path(__file__).resolve().with_name("prefect.yaml")
AUTOMATIONS_FILE = Path(__file__).resolve().with_name("automations.yaml")
BLOCK_PLACEHOLDER = "${NOTIFICATION_BLOCK}"


class DeploymentConfigError(ValueError):
    """prefect.yaml or automations.yaml says something this module cannot do."""


# -- deployments ------------------------------------------------------------------------------
def deployment_specs(path: Path = PREFECT_FILE) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    specs = doc.get("deployments") if isinstance(doc, dict) else None
    if not isinstance(specs, list):
        raise DeploymentConfigError(f"{path}: no `deployments:` list")
    return specs


def import_flow(entrypoint: str) -> Flow[..., Any]:
    """`flows/request.py:process_requests` imported as the module `flows.request` (not
    loaded from the file), so the flow is the same object the rest of dsrflow uses."""
    from prefect import Flow

    file, _, attr = entrypoint.partition(":")
    if not file.endswith(".py") or not attr:
        raise DeploymentConfigError(f"entrypoint {entrypoint!r}: expected path/to/file.py:flow")
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    found = getattr(module, attr, None)
    if not isinstance(found, Flow):
        raise DeploymentConfigError(f"entrypoint {entrypoint!r} is not a Prefect flow")
    return found


def schedules_of(spec: dict[str, Any]) -> list[Schedule]:
    from prefect.schedules import Cron, Interval

    out = []
    for item in spec.get("schedules") or []:
        options = {k: item[k] for k in ("timezone", "active", "parameters", "slug") if k in item}
        if "cron" in item:
            out.append(Cron(item["cron"], day_or=item.get("day_or", True), **options))
        elif "interval" in item:
            out.append(Interval(timedelta(seconds=float(item["interval"])),
                                anchor_date=item.get("anchor_date"), **options))
        else:
            raise DeploymentConfigError(
                f"deployment {spec.get('name')}: only cron and interval schedules are served"
            )
    return out


def runner_deployments(
    path: Path = PREFECT_FILE, without: frozenset[str] = frozenset()
) -> list[RunnerDeployment]:
    """The deployments of prefect.yaml (but those named in `without`), as `prefect.serve`
    takes them."""
    from prefect.deployments.runner import EntrypointType

    deployments = []
    for spec in deployment_specs(path):
        if spec["name"] in without:
            continue
        flow = import_flow(spec["entrypoint"])
        deployment = cast(
            "RunnerDeployment",
            flow.to_deployment(
                name=spec["name"],
                description=spec.get("description"),
                tags=spec.get("tags"),
                schedules=schedules_of(spec),
                parameters=spec.get("parameters") or {},
                concurrency_limit=spec.get("concurrency_limit"),
                # Runs import `flows.request` etc. from the installed package, whatever
                # the directory `dsrflow serve` was started in.
                entrypoint_type=EntrypointType.MODULE_PATH,
            ),
        )
        deployments.append(deployment)
    return deployments


def serve_all(
    path: Path = PREFECT_FILE, config: Path | None = None, limit: int | None = None,
    without: frozenset[str] = frozenset(),
) -> None:
    """Serve every deployment in prefect.yaml but those named in `without` from this
    process, against the Prefect API in PREFECT_API_URL (blocks until interrupted).
    `config` (dsrflow.yaml) is passed to the flow runs, which run in subprocesses, through
    DSRFLOW_CONFIG."""
    from prefect import serve

    if config is not None:
        os.environ["DSRFLOW_CONFIG"] = str(Path(config).resolve())
    serve(*runner_deployments(path, without), limit=limit)


# -- automations ------------------------------------------------------------------------------
def load_automations(
    path: Path = AUTOMATIONS_FILE, notification_block: str | UUID | None = None
) -> list[AutomationCore]:
    """The automations in the file, validated, with `${NOTIFICATION_BLOCK}` replaced by the
    block's id (`notification_block` as "<block-type-slug>/<name>" or an id; default: the
    file's `notification_block`)."""
    from prefect.events.schemas.automations import AutomationCore

    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("automations"), list):
        raise DeploymentConfigError(f"{path}: no `automations:` list")
    raw = doc["automations"]
    if _mentions(raw, BLOCK_PLACEHOLDER):
        block = notification_block or doc.get("notification_block")
        if not block:
            raise DeploymentConfigError(
                f"{path}: name the notification block (notification_block: slug/name)"
            )
        raw = _replace(raw, BLOCK_PLACEHOLDER, str(resolve_block(block)))
    return [AutomationCore.model_validate(item) for item in raw]


def resolve_block(block: str | UUID) -> UUID:
    """A block document id, from an id or "<block-type-slug>/<block-name>"."""
    if isinstance(block, UUID):
        return block
    try:
        return UUID(block)
    except ValueError:
        pass
    slug, _, name = block.partition("/")
    if not slug or not name:
        raise DeploymentConfigError(
            f"notification block {block!r}: expected <block-type-slug>/<name> or an id"
        )
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_block_document_by_name(name=name, block_type_slug=slug,
                                                       include_secrets=False)
        except ObjectNotFound:
            raise DeploymentConfigError(
                f"notification block {block!r} not found on the Prefect server: create it "
                "(UI: Blocks) or name another one"
            ) from None
    return found.id


def apply_automations(
    path: Path = AUTOMATIONS_FILE, notification_block: str | UUID | None = None
) -> dict[str, UUID]:
    """Create the file's automations, or update those that exist (matched by name), on
    the configured Prefect server; duplicates of a name are removed. Returns name -> id.
    Running it again changes nothing."""
    from prefect import get_client

    applied: dict[str, UUID] = {}
    automations = load_automations(path, notification_block)
    with get_client(sync_client=True) as client:
        for automation in automations:
            existing = client.read_automations_by_name(automation.name)
            if not existing:
                applied[automation.name] = client.create_automation(automation)
                continue
            keep, *extra = existing
            client.update_automation(keep.id, automation)
            for duplicate in extra:
                client.delete_automation(duplicate.id)
            applied[automation.name] = keep.id
    return applied


def _mentions(value: Any, needle: str) -> bool:
    if isinstance(value, str):
        return needle in value
    if isinstance(value, dict):
        return any(_mentions(v, needle) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, needle) for v in value)
    return False


def _replace(value: Any, needle: str, by: str) -> Any:
    if isinstance(value, str):
        return value.replace(needle, by)
    if isinstance(value, dict):
        return {k: _replace(v, needle, by) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, needle, by) for v in value]
    return value
