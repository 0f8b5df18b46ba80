"""Request documents in: JSON or XML bodies of ``inventorytriggerjob`` Requests to the model."""

from __future__ import annotations

from service.request.model import BatchRequest, FieldError, RequestInvalid
from service.request.validate import request_from_tree
from service.xmlsafe import parse_json, parse_xml, sniff_format


def parse_request(body: bytes, content_type: str = "", *, max_depth: int = 32) -> BatchRequest:
    """Parse and validate a Request: JSON (bare or ``{"Request": ...}``) or XML (``<Request>``).

    The format comes from ``content_type`` when it names one, else from the body's first byte.
    Raises xmlsafe.DocumentError for a body that is not a well-formed, acceptable document and
    RequestInvalid (with every error) for a document that breaks the seed's rules.
    """
    if sniff_format(body, content_type) == "json":
        return request_from_tree(parse_json(body, max_depth=max_depth))
    ((root, inner),) = parse_xml(body, max_depth=max_depth).items()
    if root != "Request":
        raise RequestInvalid([FieldError("Request", f"is the root element CI expects, not {root}")])
    return request_from_tree({"Request": inner}, from_xml=True)
