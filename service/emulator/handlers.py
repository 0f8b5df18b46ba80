"""The CI routes: batch jobs (`/inventorytriggerjob`), media jobs (`/jobs`), and emulator-only ones.

Decisions where CI's documents leave a gap, kept here so they are easy to find:
- `GET /inventorytriggerjob/<id>` and `GET /jobs/<ids>` answer 200 and list unknown ids in
  `NonExistJobIds`; cancelling an unknown job answers 404 ResourceNotFound.
- Cancelling a job that already ended answers 400 InvalidArgument; cancelling a cancelled one is a
  no-op 200.
- The batch list requires `type`; `type=Workflow` lists nothing (the emulator runs no workflows).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from service.emulator.details import batch_detail, media_detail
from service.emulator.jobs import CancelRefused
from service.emulator.keys import ENGINE, REQUEST_ID, SETTINGS, STATS, TARGET
from service.emulator.listing import Page, T, invalid, paginate, parse_page
from service.emulator.records import Batch, MediaJob
from service.emulator.responses import CIError, empty_answer, xml_answer
from service.emulator.spec import spec_from_request
from service.request import TAG_ALIASES, RequestInvalid, parse_request
from service.xmlsafe import DocumentError

routes = web.RouteTableDef()

DESCRIPTION = (
    "cirelay emulator: a local Tencent Cloud Infinite for batch jobs "
    "(/inventorytriggerjob, /jobs). Statistics at /_emulator/stats.\n"
)


@routes.get("/")
async def describe(_: web.Request) -> web.Response:
    return web.Response(text=DESCRIPTION)


# -- batch jobs ---------------------------------------------------------------------------------


@routes.post("/inventorytriggerjob")
async def create_batch(request: web.Request) -> web.Response:
    body = await request.read()
    _check_md5(request, body)
    settings = request.app[SETTINGS]
    try:
        parsed = parse_request(body, "application/xml", max_depth=settings.max_xml_depth)
    except DocumentError as exc:
        raise CIError(400, "MalformedXML", exc.message) from None
    except RequestInvalid as exc:
        problems = "; ".join(f"{e.path}: {e.message}" for e in exc.errors)
        raise CIError(400, "InvalidArgument", f"invalid Request: {problems}") from None
    where = request[TARGET]
    batch = await request.app[ENGINE].create(where.bucket, where.region, spec_from_request(parsed))
    return xml_answer({"JobsDetail": batch_detail(batch)}, request[REQUEST_ID])


@routes.get("/inventorytriggerjob/{job_id}")
async def get_batch(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    batch = request.app[ENGINE].batch(request[TARGET].bucket, job_id)
    body: dict[str, Any] = (
        {"JobsDetail": batch_detail(batch)} if batch else {"NonExistJobIds": job_id}
    )
    return xml_answer(body, request[REQUEST_ID])


@routes.get("/inventorytriggerjob")
async def list_batches(request: web.Request) -> web.Response:
    params = request.query
    kind = params.get("type", "")
    if kind not in ("Job", "Workflow"):
        raise invalid(f"type must be Job or Workflow, not {kind!r}")
    page = parse_page(params)
    batches = request.app[ENGINE].batches_of(request[TARGET].bucket)
    # Emulated batches are all Job-type and belong to no workflow.
    if kind == "Workflow" or params.get("workflowId"):
        batches = []
    job_id, name = params.get("jobId"), params.get("name")

    def keep(batch: Batch) -> bool:
        return (not job_id or batch.job_id == job_id) and (not name or batch.spec.name == name)

    return _list_answer(request, batches, page, keep, batch_detail)


def _list_answer(
    request: web.Request,
    items: Sequence[T],
    page: Page,
    keep: Callable[[T], bool],
    detail: Callable[[T], Any],
) -> web.Response:
    """A list call's answer: the page's JobsDetail (absent when empty) and its NextToken."""
    shown, token = paginate(items, page, keep)
    body: dict[str, Any] = {}
    if shown:
        body["JobsDetail"] = [detail(item) for item in shown]
    body["NextToken"] = token
    return xml_answer(body, request[REQUEST_ID])


@routes.put("/inventorytriggerjob/{job_id}")
async def cancel_batch(request: web.Request) -> web.Response:
    _require_cancel(request)
    job_id = request.match_info["job_id"]
    try:
        batch = await request.app[ENGINE].cancel_batch(request[TARGET].bucket, job_id)
    except CancelRefused as exc:
        raise CIError(400, "InvalidArgument", str(exc)) from None
    if batch is None:
        raise CIError(404, "ResourceNotFound", f"batch job {job_id} does not exist")
    return empty_answer(request[REQUEST_ID])


# -- media jobs ---------------------------------------------------------------------------------


@routes.get("/jobs/{job_ids}")
async def get_media_jobs(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    bucket = request[TARGET].bucket
    found, missing = [], []
    for job_id in filter(None, request.match_info["job_ids"].split(",")):
        job = engine.media_job(bucket, job_id)
        if job is None:
            missing.append(job_id)
        else:
            found.append(media_detail(job, engine.batches[job.batch_id]))
    body: dict[str, Any] = {}
    if found:
        body["JobsDetail"] = found
    if missing:
        body["NonExistJobIds"] = missing
    return xml_answer(body, request[REQUEST_ID])


@routes.get("/jobs")
async def list_media_jobs(request: web.Request) -> web.Response:
    params = request.query
    tag = params.get("tag", "")
    if not tag:
        raise invalid("tag is required")
    tag = TAG_ALIASES.get(tag, tag)
    page = parse_page(params)
    engine = request.app[ENGINE]
    bucket = request[TARGET].bucket
    batch_id = params.get("inventoryTriggerJobId", "")
    queue_id = params.get("queueId", "")
    if batch_id:
        batch = engine.batch(bucket, batch_id)
        jobs = engine.children(batch_id) if batch is not None else ()
    else:
        jobs = engine.media_of(bucket)

    def keep(job: MediaJob) -> bool:
        spec = engine.batches[job.batch_id].spec
        return spec.tag == tag and queue_id in ("", spec.queue_id)

    return _list_answer(
        request, jobs, page, keep, lambda j: media_detail(j, engine.batches[j.batch_id])
    )


@routes.put("/jobs/{job_id}")
async def cancel_media_job(request: web.Request) -> web.Response:
    _require_cancel(request)
    job_id = request.match_info["job_id"]
    try:
        job = await request.app[ENGINE].cancel_media(request[TARGET].bucket, job_id)
    except CancelRefused as exc:
        raise CIError(400, "InvalidArgument", str(exc)) from None
    if job is None:
        raise CIError(404, "ResourceNotFound", f"media job {job_id} does not exist")
    return empty_answer(request[REQUEST_ID])


# -- emulator-only ------------------------------------------------------------------------------


@routes.get("/_emulator/stats")
async def stats(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response(
        {**request.app[STATS].to_json(), "idle": engine.idle, "paused": engine.paused}
    )


@routes.post("/_emulator/pause")
async def pause(request: web.Request) -> web.Response:
    request.app[ENGINE].pause()
    return web.json_response({"paused": True})


@routes.post("/_emulator/resume")
async def resume(request: web.Request) -> web.Response:
    request.app[ENGINE].resume()
    return web.json_response({"paused": False})


def _require_cancel(request: web.Request) -> None:
    if "cancel" not in request.query:
        raise invalid("PUT on a job needs the ?cancel subresource")


def _check_md5(request: web.Request, body: bytes) -> None:
    sent = request.headers.get("Content-MD5")
    if sent is None:
        return
    try:
        matches = base64.b64decode(sent, validate=True) == hashlib.md5(body).digest()
    except (binascii.Error, ValueError):
        matches = False
    if not matches:
        raise CIError(400, "InvalidDigest", "Content-MD5 does not match the body")
