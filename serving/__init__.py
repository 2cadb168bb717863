"""Serving the engine as Ray Serve replicas, one per GPU, behind the same page and API.

`SERVE=ray` turns it on (`app.py` reads it); without it nothing here runs and Ray is never
imported. This module is light: it reads the serving settings from the environment and imports
Ray only inside `remote_engine`.

- `SERVE_REPLICAS`: how many replicas (default: the number of GPUs in the Ray cluster; on a
  machine without GPUs it must be given). Each replica holds one `Engine` with its own caches and
  takes one GPU (`num_gpus=1`), or `SERVE_REPLICA_CPUS` CPUs (default 1) where there is none.
- `SERVE_MIN_REPLICAS` / `SERVE_MAX_REPLICAS`: autoscaling bounds instead of a fixed count.
- `SERVE_MAX_ONGOING`: requests one replica holds at once (default 1: its engine runs one at a
  time anyway, and a full replica makes Serve pick another instead of queueing behind it).
- `RAY_ADDRESS`: a running Ray cluster to join (`ray start --head` ...); without it a local Ray
  instance starts with the app and ends with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from errors import UserFacingError

SERVE_MODES = ("ray",)
APP_NAME = "controlnet"  # the Serve application (and its one deployment's) name


class WorkerRestartedError(UserFacingError):
    """The replica running a request died (its process ended); Serve starts a new one."""


WORKER_RESTARTED = (
    "The worker running this request restarted before it finished (its process ended). "
    "Please run it again."
)


@dataclass(frozen=True)
class ServeSettings:
    """How the engine is served: `mode` None is one engine in this process (no Ray)."""

    mode: str | None = None
    replicas: int | None = None  # None: one per GPU
    min_replicas: int | None = None
    max_replicas: int | None = None
    replica_cpus: float = 1.0
    max_ongoing: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeSettings:
        env = os.environ if env is None else env
        mode = env.get("SERVE", "").strip().lower() or None
        if mode is not None and mode not in SERVE_MODES:
            raise ValueError(f"SERVE={mode!r} is unknown; use one of: {', '.join(SERVE_MODES)}.")
        settings = cls(
            mode=mode,
            replicas=_positive(env, "SERVE_REPLICAS"),
            min_replicas=_positive(env, "SERVE_MIN_REPLICAS", allow_zero=True),
            max_replicas=_positive(env, "SERVE_MAX_REPLICAS"),
            replica_cpus=float(env.get("SERVE_REPLICA_CPUS") or 1.0),
            max_ongoing=_positive(env, "SERVE_MAX_ONGOING") or 1,
        )
        if (settings.min_replicas is None) != (settings.max_replicas is None):
            raise ValueError("Set both SERVE_MIN_REPLICAS and SERVE_MAX_REPLICAS, or neither.")
        if settings.autoscaling and settings.min_replicas > settings.max_replicas:
            raise ValueError("SERVE_MIN_REPLICAS must not be above SERVE_MAX_REPLICAS.")
        return settings

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None


def _positive(env: Mapping[str, str], name: str, allow_zero: bool = False) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a whole number.") from None
    if value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be at least {0 if allow_zero else 1}, not {value}.")
    return value


def remote_engine(settings, serve_settings: ServeSettings):
    """Start (or join) Ray, deploy the replicas and return the engine the page and API call."""
    from serving.remote import connect  # imports Ray

    return connect(settings, serve_settings)
