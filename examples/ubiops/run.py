"""Deploy the two packages next to this file with the `ubiops` SDK, call them, and chain one in a pipeline.

Reads MODELBAY_URL (default http://127.0.0.1:8000), MODELBAY_TOKEN and MODELBAY_PROJECT (from
`modelbay project create NAME --json`). Every name gets a random suffix, so the script can run any
number of times; what it made is deleted at the end.
"""

import os
import tempfile
import uuid
from pathlib import Path

import ubiops

HERE = Path(__file__).resolve().parent
URL = os.environ.get("MODELBAY_URL", "http://127.0.0.1:8000")
project = os.environ["MODELBAY_PROJECT"]
suffix = uuid.uuid4().hex[:6]

client = ubiops.ApiClient(ubiops.Configuration(
    host=f"{URL}/v2.1", api_key={"Authorization": f"Token {os.environ['MODELBAY_TOKEN']}"}))
api = ubiops.CoreApi(client)


def deploy(name, package_dir, **types):
    """A deployment with version v1 running `package_dir`, once its build is done."""
    api.deployments_create(project, ubiops.DeploymentCreate(name=name, **types))
    api.deployment_versions_create(project, name, ubiops.DeploymentVersionCreate(version="v1"))
    with tempfile.TemporaryDirectory() as tmp:
        archive = ubiops.utils.zip_dir(str(package_dir), f"{tmp}/package.zip")
        api.revisions_file_upload(project, name, "v1", file=archive)
    ubiops.utils.wait_for_deployment_version(client, project, name, "v1", quiet=True)


# A plain deployment: text in, text out.
echo = f"echo-{suffix}"
deploy(echo, HERE / "plain", input_type="plain", output_type="plain")
print("plain:", api.deployment_requests_create(project, echo, "hello").result)

# A structured deployment: typed fields in and out.
x = [{"name": "x", "data_type": "int"}]
double = f"double-{suffix}"
deploy(double, HERE / "structured",
       input_type="structured", input_fields=x, output_type="structured", output_fields=x)
print("direct:", api.deployment_requests_create(project, double, {"x": 21}).result)

# A batch request: accepted at once, run in the background, collected when done.
accepted = api.batch_deployment_requests_create(project, double, [{"x": 1}, {"x": 2}, {"x": 3}])
for r in accepted:
    ubiops.utils.wait_for_deployment_request(client, project, double, r.id, quiet=True)
done = api.deployment_requests_batch_get(project, double, [r.id for r in accepted])
print("batch:", [r.result for r in done])

# A pipeline that runs the structured deployment twice in a row.
pipeline = f"twice-{suffix}"
api.pipelines_create(project, ubiops.PipelineCreate(
    name=pipeline, input_type="structured", input_fields=x, output_type="structured", output_fields=x))
to_x = [{"source_field_name": "x", "destination_field_name": "x"}]
api.pipeline_versions_create(project, pipeline, ubiops.PipelineVersionCreate(
    version="v1",
    objects=[{"name": "a", "reference_name": double}, {"name": "b", "reference_name": double}],
    attachments=[
        {"destination_name": "a", "sources": [{"source_name": "pipeline_start", "mapping": to_x}]},
        {"destination_name": "b", "sources": [{"source_name": "a", "mapping": to_x}]},
        {"destination_name": "pipeline_end", "sources": [{"source_name": "b", "mapping": to_x}]},
    ]))
print("pipeline:", api.pipeline_requests_create(project, pipeline, {"x": 5}).result)

api.pipelines_delete(project, pipeline)
api.deployments_delete(project, double)
api.deployments_delete(project, echo)
client.close()
print(f"done (made and deleted {echo}, {double}, {pipeline})")
