"""TaskFinish callback bodies in XML or JSON, with the inconsistencies CI's JSON is known for. Pure.

XML: `<Response><EventName>TaskFinish</EventName><JobsDetail>…` (a one-element list renders as a
single child). JSON: `{"EventName": "TaskFinish", "JobsDetail": …}` where, as in CI's samples,
JobsDetail is sometimes an object and sometimes a one-element list, a single Md5Info likewise, and
JobLevel is a number while every other value stays a string.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from service.xmlsafe import unparse_xml

EVENT_NAME = "TaskFinish"


def task_finish(detail: dict[str, Any], fmt: str, rng: random.Random) -> tuple[bytes, str]:
    """(body, content type) of the callback for one media job's JobsDetail."""
    if fmt.upper() == "JSON":
        body = json.dumps(json_tree(detail, rng), ensure_ascii=False).encode()
        return body, "application/json"
    tree = {"Response": {"EventName": EVENT_NAME, "JobsDetail": detail}}
    return unparse_xml(tree), "application/xml"


def json_tree(detail: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    tree = copy.deepcopy(detail)
    operation = tree["Operation"]
    operation["JobLevel"] = int(operation["JobLevel"])
    output_file = operation.get("MediaResult", {}).get("OutputFile")
    if output_file is not None and len(output_file["Md5Info"]) == 1 and rng.random() < 0.5:
        output_file["Md5Info"] = output_file["Md5Info"][0]
    jobs_detail: Any = tree if rng.random() < 0.5 else [tree]
    return {"EventName": EVENT_NAME, "JobsDetail": jobs_detail}
