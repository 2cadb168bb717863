"""The front process's side of Ray Serve: deploy the replicas, and `RemoteEngine`, which the page
and the API call exactly as they call `Engine`.

`RemoteEngine` builds and checks each request here, with the engine's own constructors
(`Engine.generate`, `compose`, `upscale`, `annotate` are borrowed as they are), so a bad request
never reaches a replica. Only its `run`, `run_map` and `run_upscale` differ: they send the checked
request (plain dataclasses, pickled) through the deployment's handle and stream the progress and
previews back into the same callbacks, so the progress bar, the previews and Stop work as with
one engine.

A replica whose process dies mid-request is restarted by Serve; the request it held gets
`WorkerRestartedError` ("please run it again") and is not retried: a request that killed its
worker (out of host memory, a crashing kernel) would kill a second one, and with a random seed
a retry would not even be the same request. Other requests run on the other replicas untouched.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import ray
import torch
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError, WorkerCrashedError

from pipelines.engine import Engine, RunTiming
from serving import APP_NAME, WORKER_RESTARTED, ServeSettings, WorkerRestartedError
from serving.replica import EngineReplica
from settings import PROJECT_ROOT, Settings

logger = logging.getLogger(__name__)
# Lost with the replica's process: the request it held cannot finish.
WORKER_LOST = (RayActorError, ActorUnavailableError, WorkerCrashedError)
# Read by the libraries the engine loads models with; the replicas see the front's values.
PASSED_ENV_PREFIXES = ("HF_", "TRANSFORMERS_", "DISABLE_SAFETENSORS_CONVERSION")


class RemoteEngine:
    """The engine's public face, its requests run by Serve replicas (`concurrent_runs` at once)."""

    generate = Engine.generate
    compose = Engine.compose
    upscale = Engine.upscale
    annotate = Engine.annotate
    base_model_names = Engine.base_model_names

    def __init__(self, settings: Settings, handle, replicas: int, info: dict[str, Any]):
        self.settings = settings
        self.concurrent_runs = replicas  # the page's queue lets this many generations run
        self.device = torch.device(info["device"])  # the replicas' kind of device
        self.fast_path = False  # each replica warms itself up (serving.replica)
        self.last_timing: RunTiming | None = None
        self._handle = handle
        self._replica_description = info["describe"]

    def describe(self) -> str:
        return f"Ray Serve: {self.concurrent_runs} replica(s), each: {self._replica_description}"

    def warm_up(self, condition: str = "canny") -> None:
        """Nothing here: each replica compiles its own fast path when it starts."""
        return None

    def run(self, request, on_progress=None, on_preview=None):
        return self._stream("generate", request, on_progress, on_preview)

    def run_upscale(self, request, on_progress=None):
        return self._stream("upscale", request, on_progress)

    def run_map(self, request):
        return self._stream("map", request)

    def _stream(self, kind: str, request, on_progress=None, on_preview=None):
        responses = self._handle.options(stream=True).stream.remote(
            kind, request, on_progress is not None, on_preview is not None
        )
        try:
            for event in responses:
                if event[0] == "progress":
                    on_progress(*event[1:])
                elif event[0] == "preview":
                    on_preview(*event[1:])
                elif event[0] == "result":
                    self.last_timing = event[2]
                    return event[1]
                elif event[0] == "error":
                    raise event[1]  # a UserFacingError, exactly as the engine raised it
        except WORKER_LOST as error:
            logger.warning("A replica was lost mid-request: %s", error)
            raise WorkerRestartedError(WORKER_RESTARTED) from error
        except RayTaskError as error:  # a bug in the replica: the original error, for the log
            cause = error.cause
            raise (cause if isinstance(cause, Exception) else error) from error
        except BaseException:  # Stop (raised by on_progress) or the caller went away
            responses.cancel()  # the replica's run ends at its next step
            raise
        raise WorkerRestartedError(WORKER_RESTARTED)  # the stream ended without an outcome


def replica_env() -> dict[str, str]:
    """The replicas' environment: the app's modules importable (the repository at the same path
    on every node), and the model libraries' settings of the front."""
    paths = [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"PYTHONPATH": os.pathsep.join(paths)}
    env.update(
        (name, value) for name, value in os.environ.items() if name.startswith(PASSED_ENV_PREFIXES)
    )
    return env


def deployment_options(serving: ServeSettings, gpus: int) -> dict[str, Any]:
    """Serve's options for the deployment: one GPU per replica where the cluster has GPUs, and
    the replica count (one per GPU unless given) or the autoscaling bounds."""
    actor = {"runtime_env": {"env_vars": replica_env()}}
    if gpus:
        actor["num_gpus"] = 1
    else:
        actor["num_cpus"] = serving.replica_cpus
    options: dict[str, Any] = {
        "name": APP_NAME,
        "ray_actor_options": actor,
        "max_ongoing_requests": serving.max_ongoing,
    }
    if serving.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": serving.min_replicas,
            "max_replicas": serving.max_replicas,
            "target_ongoing_requests": serving.max_ongoing,
        }
        return options
    replicas = serving.replicas or gpus
    if not replicas:
        raise ValueError(
            "SERVE=ray: the Ray cluster has no GPU, so say how many replicas to run "
            "(SERVE_REPLICAS=2 runs two CPU replicas)."
        )
    options["num_replicas"] = replicas
    return options


def local_cpus(serving: ServeSettings) -> int:
    """The CPUs a local Ray instance offers: the machine's, or as many as the replicas ask for
    (Ray's CPUs are a count it schedules by, not cores it pins), so that SERVE_REPLICAS=4 on two
    cores starts four replicas instead of waiting for cores that never come."""
    replicas = serving.max_replicas or serving.replicas or 0
    return max(os.cpu_count() or 1, math.ceil(replicas * serving.replica_cpus))


def connect(settings: Settings, serving: ServeSettings) -> RemoteEngine:
    """Join the Ray cluster at RAY_ADDRESS (or start one here), deploy the replicas (replacing a
    deployment of the same name) and return the engine that sends them requests."""
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:  # a local instance with room for every replica asked for, even on a small machine
            ray.init(include_dashboard=False, num_cpus=local_cpus(serving))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    options = deployment_options(serving, gpus)
    serve.start(proxy_location="Disabled")  # requests come through the handle, not HTTP
    deployment = serve.deployment(**options)(EngineReplica)
    handle = serve.run(deployment.bind(settings), name=APP_NAME, route_prefix=None)
    info = handle.info.remote().result()
    replicas = options.get("num_replicas") or serving.max_replicas
    logger.info("Ray Serve: %d replica(s) of the engine: %s", replicas, info["describe"])
    return RemoteEngine(settings, handle, replicas, info)
