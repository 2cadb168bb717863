"""The AUTOMATIC1111-compatible HTTP routes, added to the page's own FastAPI app (same server,
same port): /sdapi/v1/txt2img and img2img with ControlNet units, /controlnet/detect, and the
lists clients read first (models, modules, samplers, options).

Every request goes through the engine's `run` / `run_map`, which hold the engine's device lock:
a page request and an API request never run at once. Errors are A1111's JSON
(`{"error", "detail", "body", "errors"}`) with a status that says whose fault it is: 422 for a
value the request's checks refuse, 413 for an image or body over the limits, 400 for a body that
is not JSON, 401 without the `API_AUTH` credentials, 503 when busy or a model is missing.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from a1111 import names, payload
from annotators import ANNOTATORS
from errors import (
    GpuOutOfMemoryError,
    ImageTooLargeError,
    InvalidRequestError,
    ModelUnavailableError,
    UserFacingError,
)
from png_info import a1111_infotext, png_bytes_with_parameters
from settings import Settings

logger = logging.getLogger(__name__)
API_VERSION = 3  # what sd-webui-controlnet's /controlnet/version answers (get_api_version)
# A body holds at most a few images (base64: 4 bytes per 3) besides a little JSON.
_IMAGES_PER_BODY = 5
_JSON_ROOM = 2**20


class BodyError(UserFacingError):
    """The request body is not a JSON object (status 400)."""


class BodyTooLargeError(ImageTooLargeError):
    """The request body is over what any request may send (status 413)."""


class BusyError(UserFacingError):
    """More requests wait than the queue holds (status 503)."""


def status_of(error: Exception) -> int:
    """The HTTP status for an error a request ended with."""
    if isinstance(error, BodyError):
        return 400
    if isinstance(error, ImageTooLargeError):
        return 413
    if isinstance(error, InvalidRequestError):
        return 422
    if isinstance(error, ModelUnavailableError | GpuOutOfMemoryError | BusyError):
        return 503
    if isinstance(error, UserFacingError):
        return 400
    return 500


def error_response(error: Exception) -> JSONResponse:
    """A1111's error body (modules/api/api.py's handler: error, detail, body, errors)."""
    status = status_of(error)
    if status == 500:
        message = (
            f"Something went wrong ({type(error).__name__}); the server logged the details. "
            "Try again, or lower the resolution or the number of images."
        )
    else:
        message = str(error)
    return JSONResponse(
        {"error": type(error).__name__, "detail": message, "body": "", "errors": message},
        status_code=status,
    )


def _png_base64(image, parameters: dict | None) -> str:
    return base64.b64encode(png_bytes_with_parameters(image, parameters)).decode("ascii")


class A1111Api:
    """The routes' work, on one engine; `body_limit` bounds what a request may send."""

    def __init__(self, engine: Any, settings: Settings):
        self.engine, self.settings = engine, settings
        limits = settings.limits
        self.body_limit = _IMAGES_PER_BODY * (limits.max_upload_bytes * 4 // 3 + 4) + _JSON_ROOM
        # Requests waiting for the device beyond the page's queue size are turned away.
        self._waiting = threading.BoundedSemaphore(settings.queue_size)

    async def read_json(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.body_limit:
            raise BodyTooLargeError(self._too_large(int(declared)))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.body_limit:
                raise BodyTooLargeError(self._too_large(size))
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            raise BodyError("The request body is not JSON: send a JSON object.") from None

    def _too_large(self, size: int) -> str:
        return (
            f"The request body is {size / 2**20:.1f} MB, over this server's "
            f"{self.body_limit / 2**20:.0f} MB: send smaller images."
        )

    def on_device(self, work: Callable[[], Any]) -> Any:
        """`work` (which runs the engine) unless too many requests wait already."""
        if not self._waiting.acquire(blocking=False):
            raise BusyError(
                f"The server is busy: {self.settings.queue_size} requests are waiting. Try "
                "again in a moment."
            )
        try:
            return work()
        finally:
            self._waiting.release()

    # ---- the work ------------------------------------------------------------------------------
    def generate(self, body: Any, img2img: bool) -> dict[str, Any]:
        built = payload.generation(self.settings, body, img2img)
        result = self.on_device(lambda: self.engine.run(built.request))
        images = [
            _png_base64(image, parameters)
            for image, parameters in zip(result.images, result.parameters, strict=True)
        ]
        images += [  # the extension appends each unit's map after the images
            _png_base64(control_map, None)
            for control_map, save in zip(result.control_maps, built.save_maps, strict=True)
            if save
        ]
        return {
            "images": images,
            "parameters": built.echo,
            "info": json.dumps(self._info(built, result, body, img2img)),
        }

    def _info(self, built, result, body, img2img: bool) -> dict[str, Any]:
        request = built.request
        height, width = request.size
        count = len(result.seeds)
        info = {
            "prompt": request.prompt,
            "all_prompts": [request.prompt] * count,
            "negative_prompt": request.negative_prompt,
            "all_negative_prompts": [request.negative_prompt] * count,
            "seed": result.seeds[0],
            "all_seeds": list(result.seeds),
            "subseed": -1,
            "all_subseeds": [-1] * count,
            "width": width,
            "height": height,
            "sampler_name": request.scheduler,
            "cfg_scale": request.guidance_scale,
            "steps": request.steps,
            "batch_size": body.get("batch_size", 1),
            "n_iter": body.get("n_iter", 1),
            "sd_model_name": request.base_model,
            "infotexts": [a1111_infotext(parameters) for parameters in result.parameters],
            "notes": built.notes + result.warnings,
        }
        if img2img:
            info["denoising_strength"] = request.denoising_strength
        return info

    def detect(self, body: Any) -> dict[str, Any]:
        built = payload.detection(self.settings, body)
        maps = [
            self.on_device(lambda request=request: self.engine.run_map(request))
            for request in built.requests
        ]
        warnings = [text for control in maps for text in control.warnings]
        return {
            "images": [_png_base64(control.image, None) for control in maps],
            "info": " ".join(["Success", *built.notes, *warnings]),
        }

    # ---- the lists -----------------------------------------------------------------------------
    @staticmethod
    def module_list() -> dict[str, Any]:
        detail = {}
        for name, module in names.MODULES.items():
            own = {param.name: param for param in ANNOTATORS[module.annotators[0]].params}
            sliders = [
                {
                    "name": own[key].label,
                    "value": own[key].default,
                    "min": own[key].minimum,
                    "max": own[key].maximum,
                    "step": own[key].step,
                }
                for key in module.thresholds
            ]
            detail[name] = {"model_free": names.model_free(name), "sliders": sliders}
        return {"module_list": list(names.MODULES), "module_detail": detail}

    def sd_models(self) -> list[dict[str, Any]]:
        return [
            {
                "title": name,
                "model_name": name,
                "hash": None,
                "sha256": None,
                "filename": name,  # never a server path
                "config": None,
            }
            for name in self.settings.base_models
        ]

    def options(self) -> dict[str, Any]:
        return {
            "sd_model_checkpoint": next(iter(self.settings.base_models)),
            "samples_format": "png",
            "control_net_unit_count": self.settings.limits.max_units,
        }


def add_routes(app: FastAPI, engine: Any, settings: Settings) -> A1111Api:
    """Add the A1111 routes to `app` (the page's server), asking for `settings.api_auth`'s
    credentials when it has any."""
    api = A1111Api(engine, settings)
    dependencies = [Depends(_credentials_check(settings))] if settings.api_auth else []
    router = APIRouter(dependencies=dependencies)

    def posted(work: Callable[[Any], dict[str, Any]]):
        async def route(request: Request):
            try:
                body = await api.read_json(request)
                return await run_in_threadpool(work, body)
            except Exception as error:  # noqa: BLE001 (every failure gets A1111's error body)
                if status_of(error) == 500:
                    logger.exception("Unexpected failure in %s", request.url.path)
                else:
                    logger.info("Refused %s: %s", request.url.path, error)
                return error_response(error)

        return route

    router.add_api_route(
        "/sdapi/v1/txt2img", posted(lambda body: api.generate(body, False)), methods=["POST"]
    )
    router.add_api_route(
        "/sdapi/v1/img2img", posted(lambda body: api.generate(body, True)), methods=["POST"]
    )
    router.add_api_route("/controlnet/detect", posted(api.detect), methods=["POST"])
    lists = {
        "/controlnet/model_list": lambda: {"model_list": list(names.MODELS)},
        "/controlnet/module_list": api.module_list,
        "/controlnet/version": lambda: {"version": API_VERSION},
        "/sdapi/v1/samplers": lambda: [
            {"name": name, "aliases": [], "options": {}} for name in names.SAMPLERS
        ],
        "/sdapi/v1/sd-models": api.sd_models,
        "/sdapi/v1/options": api.options,
        "/sdapi/v1/scripts": lambda: {"txt2img": ["controlnet"], "img2img": ["controlnet"]},
    }
    for path, answer in lists.items():
        router.add_api_route(path, answer, methods=["GET"])
    app.include_router(router)
    return api


def _credentials_check(settings: Settings):
    """A dependency that lets a request in only with one of `settings.api_auth`'s HTTP basic
    credentials (compared in constant time)."""
    expected = [(user.encode(), password.encode()) for user, password in settings.api_auth]

    def check(request: Request) -> None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            given = b""
        user, _, password = given.partition(b":")
        if scheme.lower() == "basic" and any(
            secrets.compare_digest(user, known_user) & secrets.compare_digest(password, known)
            for known_user, known in expected
        ):
            return
        raise HTTPException(
            status_code=401,
            detail="Incorrect username or password (API_AUTH).",
            headers={"WWW-Authenticate": "Basic"},
        )

    return check
