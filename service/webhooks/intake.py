"""The caller's CallBack checked at intake: a URL that deliveries would refuse is a rule error."""

from __future__ import annotations

from service.request import BatchRequest, RequestInvalid
from service.request.model import FieldError
from service.webhooks.ssrf import AddressPolicy

PATH = "Request.Operation.CallBack"


async def check_callback(request: BatchRequest, policy: AddressPolicy) -> None:
    """Raise ``RequestInvalid`` naming ``Request.Operation.CallBack`` when the Request's own
    CallBack URL could never be delivered to (TDMQ jobs and ``no`` are left alone)."""
    operation = request.operation
    url = operation.callback
    if not url or url == "no" or operation.callback_type == "TDMQ":
        return
    problem = await policy.check(url)
    if problem is not None:
        raise RequestInvalid([FieldError(PATH, problem)])
