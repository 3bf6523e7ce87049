"""A webhook receiver: prints each job result whose signature holds, refuses the others (401).

Listens on 127.0.0.1:WEBHOOK_PORT (default 8123); WEBHOOK_SECRET is the webhook's base64 secret,
the one `run.py` gives modelbay. Stop it with Ctrl-C.
"""

import base64
import hashlib
import hmac
import json
import os
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def verify(secret_b64: str, body: bytes, header: str, tolerance_ms: int = 300_000) -> bool:
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if not fields.get("t", "").isdigit() or "v1" not in fields:
        return False
    expected = hmac.new(base64.b64decode(secret_b64), fields["t"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    fresh = abs(time.time() * 1000 - int(fields["t"])) <= tolerance_ms
    return fresh and hmac.compare_digest(expected, fields["v1"])


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not verify(os.environ["WEBHOOK_SECRET"], body, self.headers.get("X-Modelbay-Signature", "")):
            print("refused a delivery: bad signature", flush=True)
            self.send_response(401)
            self.end_headers()
            return
        result = json.loads(body)
        # A delivery is retried until it is answered 2xx: X-Modelbay-Delivery names it on every try.
        outcome = result.get("result", result.get("reason"))
        print(f"item {result.get('itemIndex')}: {result.get('status')} {json.dumps(outcome)} "
              f"(delivery {self.headers['X-Modelbay-Delivery']}, signature ok)", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format, *args):  # quiet: the lines above say what arrived
        pass


port = int(os.environ.get("WEBHOOK_PORT", "8123"))
print(f"listening on http://127.0.0.1:{port}/hook", flush=True)
HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
