"""An ABEJA handler (`main:handler`): answers the JSON it gets with its `x` doubled."""

import json
import os


def handler(request, context):
    body = json.loads(request.read() or b"{}")
    print(f"got {body}")  # kept in the run's and the service's logs
    return {
        "status_code": 200,
        "content_type": "application/json",
        "content": {"x": body.get("x", 0) * 2, "greeting": os.environ.get("GREETING", "")},
    }
