"""Deploy `handler/` with the `abeja-sdk`, run it once, then serve it and call the service.

Reads the SDK's own variables: ABEJA_API_URL (the server, e.g. http://localhost:8000),
PLATFORM_AUTH_TOKEN (the project's token) and ABEJA_ORGANIZATION_ID (its `organization_id`);
takes the archive made by `tar` (see README.md) as its argument.
"""

import os
import socket
import sys
import time
import uuid
from urllib.parse import urlparse

import requests
from abeja.deployments import APIClient as Deployments
from abeja.runs import APIClient as Runs
from abeja.services import APIClient as Services

org = os.environ["ABEJA_ORGANIZATION_ID"]
archive = sys.argv[1] if len(sys.argv) > 1 else "handler.tar.gz"


def wait_for(read, done, timeout=300):
    """Poll `read()` until its `status` is one of `done`; the last answer."""
    deadline = time.monotonic() + timeout
    while (answer := read())["status"] not in done:
        if time.monotonic() > deadline:
            sys.exit(f"gave up waiting: {answer}")
        time.sleep(0.5)
    return answer


# A deployment's name is unique in its project (modelbay's deployments are shared with UbiOps):
# the random suffix lets this script run any number of times.
d = Deployments().create_deployment(org, f"doubler-{uuid.uuid4().hex[:6]}")["deployment_id"]
version = Deployments().create_deployment_version(
    org, d, "0.0.1", "main:handler", "abeja-inc/all-cpu:19.10", user_parameters={"GREETING": "hello"})
with open(archive, "rb") as f:
    requests.put(version["upload_url"], data=f, timeout=60).raise_for_status()  # signed URL: no auth header

# No need to wait for the build: the run starts once the code is built.
run = Runs().create_run(org, d, version["version_id"], input_data={"x": 1})
print("run created:", run["status"])
run = wait_for(lambda: Runs().get_run(org, d, run["run_id"]), ("SUCCEEDED", "FAILED"))
print("run:", run["status"])

service = Services().create_service(org, d, version["version_id"])
service = wait_for(lambda: Services().get_service(org, d, service["service_id"]), ("READY",))
print("service:", service["status"])

# The SDK sends service calls to http://<organization_id>.<host of ABEJA_API_URL>/…; where that
# name does not resolve (no /etc/hosts line, see README.md), call the server itself with that Host.
base = urlparse(os.environ["ABEJA_API_URL"])
proxy_host = f"{org}.{base.netloc}"
try:
    socket.getaddrinfo(f"{org}.{base.hostname}", base.port)
    answer = Services().request_service(org, d, service["service_id"], json={"x": 21})
except socket.gaierror:
    answer = requests.post(
        f"{base.scheme}://{base.netloc}/deployments/{d}/services/{service['service_id']}",
        json={"x": 21}, headers={"Host": proxy_host, "Authorization": f"Bearer {os.environ['PLATFORM_AUTH_TOKEN']}"},
        timeout=60)
answer.raise_for_status()
print("service answered:", answer.json())

Services().delete_service(org, d, service["service_id"])
Deployments().delete_deployment(org, d)
print(f"done (made and deleted deployment {d})")
