"""Whether Prefect accepts each pipeline's `schedule:` cron and timezone strings.

Prefect's own schedule model is the judge, so the check lives here, next to `layerwise serve`, and
the core (layerwise/) imports no Prefect. `layerwise validate`, `list`, `run` and `serve` call
check_schedules right after loading, so a bad cron is a ConfigError (exit 2) naming the file, the
pipeline and the key, before any data is read or any run exists.
"""
from __future__ import annotations

import os
from typing import Mapping

from pydantic import ValidationError

from layerwise.config import ConfigError, PipelineConfig, ScheduleConfig, describe_errors


def schedule_problems(schedule: ScheduleConfig) -> list[dict]:
    """What Prefect refuses in schedule.cron / schedule.timezone, as pydantic-shaped error dicts."""
    from prefect.client.schemas.schedules import CronSchedule  # only when a pipeline has a schedule

    problems = []
    for field in ("cron", "timezone"):
        value = getattr(schedule, field)
        try:
            CronSchedule(**{"cron": "0 0 * * *", field: value})
        except ValidationError as exc:
            problems.append({"type": "value_error", "loc": ("schedule", field), "input": value,
                             "msg": "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())})
    return problems


def check_schedules(pipelines: Mapping[str, PipelineConfig], source: str | os.PathLike) -> None:
    """Raise ConfigError for the first pipeline whose cron or timezone Prefect refuses, worded as the
    config's other errors: `SOURCE: pipeline 'NAME': schedule.cron: Invalid cron string: ... (got '...')`."""
    for name, cfg in pipelines.items():
        if cfg.schedule is None:
            continue
        problems = schedule_problems(cfg.schedule)
        if problems:
            raise ConfigError(f"{source}: pipeline '{name}': {describe_errors(problems, PipelineConfig)}")
