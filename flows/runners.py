"""Where `process-requests` runs its system tasks: threads in the flow's process (the
default), or a Dask cluster — a LocalCluster of worker processes started for the run, or an
existing scheduler.

Dask workers are other processes (on other machines, with a scheduler address): a system
task there builds its own runtime from `$DSRFLOW_CONFIG` (`pipeline.runtime.get_runtime`) and
reports to the Prefect API in `$PREFECT_API_URL`, so both must be set in the workers'
environment. Only the system tasks (collect, erase, verify: one per system) go to the
cluster; the batch's gate, plan and close run in the flow's process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from dsrflow.settings import TaskRunnerSettings


def task_runner(settings: TaskRunnerSettings) -> TaskRunner[Any]:
    """The Prefect task runner the settings describe (not started)."""
    if settings.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=settings.max_workers)
    # Imported here: prefect-dask (and distributed) only matter when Dask is chosen.
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.dask_workers,
            "threads_per_worker": settings.dask_threads_per_worker,
            "processes": True,
            # No dashboard: it would claim :8787 (dsrflow serve's callback port) and it
            # needs bokeh, which is not installed.
            "dashboard_address": None,
        }
    )


def _settings_from_runtime() -> TaskRunnerSettings:
    from pipeline.runtime import get_runtime

    return get_runtime().settings.task_runner


class SettingsTaskRunner(TaskRunner[Any]):
    """A placeholder that becomes the configured runner when a flow run starts.

    Prefect's flow engine enters `flow.task_runner.duplicate()` for every run; this
    `duplicate()` reads the settings of the process running the flow (`get_runtime()`: the
    CLI's `--config`, a test's `set_runtime`, or `$DSRFLOW_CONFIG` in `dsrflow serve` and
    in work-pool workers) and returns that runner. So one `@flow(task_runner=
    SettingsTaskRunner())` follows the setting in every way the flow is started, without
    reading settings at import time.
    """

    def __init__(self, settings: Callable[[], TaskRunnerSettings] | None = None) -> None:
        super().__init__()
        self._settings = settings or _settings_from_runtime

    def duplicate(self) -> Any:  # the configured runner, not a SettingsTaskRunner
        return task_runner(self._settings())

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "SettingsTaskRunner is resolved when a flow run starts (duplicate()); "
            "it cannot run tasks itself"
        )
