"""Run the items of `items.ndjson` through a model with the `datature` SDK; each result goes to a webhook.

Reads MODELBAY_URL (default http://127.0.0.1:8000), MODELBAY_TOKEN, MODELBAY_PROJECT and
DATATURE_PROJECT_ID (from `modelbay project create NAME --json`), WEBHOOK_URL (default
http://127.0.0.1:8123/hook, where `receiver.py` listens) and WEBHOOK_SECRET (the same as the
receiver's). Names get a random suffix, so the script can run any number of times.
"""

import os
import tempfile
import uuid
from pathlib import Path

import ubiops
from datature.nexus import Client

HERE = Path(__file__).resolve().parent
URL = os.environ.get("MODELBAY_URL", "http://127.0.0.1:8000")
token = os.environ["MODELBAY_TOKEN"]
name = f"doubler-{uuid.uuid4().hex[:6]}"

# Nexus has no call that makes a deployment: make it with the ubiops SDK (the same server, token
# and deployments).
x = [{"name": "x", "data_type": "int"}]
p = os.environ["MODELBAY_PROJECT"]
with ubiops.ApiClient(ubiops.Configuration(
        host=f"{URL}/v2.1", api_key={"Authorization": f"Token {token}"})) as client:
    api = ubiops.CoreApi(client)
    api.deployments_create(p, ubiops.DeploymentCreate(
        name=name, input_type="structured", input_fields=x, output_type="structured", output_fields=x))
    api.deployment_versions_create(p, name, ubiops.DeploymentVersionCreate(version="v1"))
    with tempfile.TemporaryDirectory() as tmp:
        api.revisions_file_upload(p, name, "v1", file=ubiops.utils.zip_dir(str(HERE / "model"), f"{tmp}/m.zip"))
    ubiops.utils.wait_for_deployment_version(client, p, name, "v1", quiet=True)

# The SDK builds URLs with urljoin, which drops any path: give it the server's root.
project = Client(token, endpoint=URL).get_project(os.environ["DATATURE_PROJECT_ID"])
hook = project.batch.webhooks.create(f"results-{name}", {
    "endpoint": os.environ.get("WEBHOOK_URL", "http://127.0.0.1:8123/hook"),
    "secret": {"contents": os.environ["WEBHOOK_SECRET"]}})
dataset = project.batch.datasets.create(f"items-{name}", str(HERE / "items.ndjson"))
dataset = project.batch.datasets.wait_until_done(dataset.id, interval=1)
print("dataset:", dataset.status.overview, dataset.status.item_count, "items")

# Pick the deployment by its name: the first of the list may be another one, or one that failed.
deployment_id = next(d.id for d in project.deployments.list() if d.name == name)
job = project.batch.jobs.create(f"job-{name}", {
    "dataset_id": dataset.id, "webhook_id": hook.id, "deployment_id": deployment_id})
done = project.batch.jobs.wait_until_done(job.id, interval=1)
print("job:", done.status.overview, "delivered:", done.status.items.delivered,
      "failed to deliver:", done.status.items.failed_deliver)

project.batch.webhooks.delete(hook.id)
project.batch.datasets.delete(dataset.id)
with ubiops.ApiClient(ubiops.Configuration(
        host=f"{URL}/v2.1", api_key={"Authorization": f"Token {token}"})) as client:
    ubiops.CoreApi(client).deployments_delete(p, name)
print(f"done (made and deleted {name}, its webhook and its dataset)")
