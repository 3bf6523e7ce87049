"""The stored rows. Portable types only, so the same schema runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON, list[Any]: JSON}


class ProjectRow(Base):
    __tablename__ = "projects"
    __table_args__ = (
        UniqueConstraint("number", name="uq_projects_number"),
        UniqueConstraint("handle", name="uq_projects_handle"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Public ids besides the name, shown by each dialect its own way (`dialects/*/ids.py`).
    number: Mapped[int] = mapped_column(BigInteger)
    handle: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    input_type: Mapped[str] = mapped_column(String(16))
    output_type: Mapped[str] = mapped_column(String(16))
    input_fields: Mapped[list[Any]] = mapped_column(default=list)
    output_fields: Mapped[list[Any]] = mapped_column(default=list)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    default_version_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("deployment_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    environment: Mapped[str] = mapped_column(String(64))
    instance_type: Mapped[str] = mapped_column(String(64))
    minimum_instances: Mapped[int] = mapped_column(Integer)
    maximum_instances: Mapped[int] = mapped_column(Integer)
    maximum_idle_time: Mapped[int] = mapped_column(Integer)  # seconds
    request_retention_mode: Mapped[str] = mapped_column(String(16))
    request_retention_time: Mapped[int] = mapped_column(Integer)  # seconds
    maximum_queue_size_express: Mapped[int | None] = mapped_column(Integer)
    maximum_queue_size_batch: Mapped[int | None] = mapped_column(Integer)
    instance_processes: Mapped[int] = mapped_column(Integer, default=1)
    environment_variables: Mapped[dict[str, Any]] = mapped_column(default=dict)
    handler: Mapped[str | None] = mapped_column(String(200))  # "module:function" code, else a Deployment class
    status: Mapped[str] = mapped_column(String(16))  # unavailable / building / available / failed
    active_revision_id: Mapped[str | None] = mapped_column(String(36))
    latest_revision_id: Mapped[str | None] = mapped_column(String(36))
    last_file_upload: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class EnvironmentVariableRow(Base):
    """An environment variable of a project, a deployment or a version: the instances of a version
    get the project's, then the deployment's, then the version's own, the most specific winning
    (`core.environment_variables`)."""

    __tablename__ = "environment_variables"
    __table_args__ = (UniqueConstraint("scope_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    deployment_id: Mapped[str | None] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[str | None] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    scope_id: Mapped[str] = mapped_column(String(36))  # the most specific of the three: names are unique in it
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(Text)
    secret: Mapped[bool] = mapped_column(default=False)  # its value is never answered
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class RevisionRow(Base):
    """One uploaded code archive of a version and its build."""

    __tablename__ = "revisions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # queued / building / success / failed
    owner: Mapped[str | None] = mapped_column(String(36))  # the node that claimed it (`core.nodes`)
    archive_key: Mapped[str] = mapped_column(String(200))  # blob key of the upload
    error_message: Mapped[str | None] = mapped_column(Text)
    build_log: Mapped[str] = mapped_column(Text, default="")
    package_dir: Mapped[str | None] = mapped_column(Text)
    python: Mapped[str | None] = mapped_column(Text)
    has_request_method: Mapped[bool] = mapped_column(default=False)
    has_requests_method: Mapped[bool] = mapped_column(default=False)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class RequestRow(Base):
    """One execution of a version: a direct or batch request, whatever dialect made it."""

    __tablename__ = "requests"
    __table_args__ = (
        Index("ix_requests_version_created", "version_id", "created_at"),
        # A project's requests newest first, a page at a time (the web console's lists: core/browse.py).
        Index("ix_requests_project_created", "project_id", "created_at", "id"),
        Index("ix_requests_status", "status"),
        # The queue order of a version's pending requests: a claim reads a few rows, whatever the backlog.
        Index("ix_requests_pending", "version_id", "priority", "created_at", "id",
              postgresql_where=text("status = 'pending'"), sqlite_where=text("status = 'pending'")),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(36))  # ix_requests_project_created leads with it
    deployment_id: Mapped[str] = mapped_column(String(36))
    version_id: Mapped[str] = mapped_column(String(36))
    mode: Mapped[str] = mapped_column(String(8))  # direct / batch
    status: Mapped[str] = mapped_column(String(20))
    owner: Mapped[str | None] = mapped_column(String(36))  # the node that claimed it (`core.nodes`)
    priority: Mapped[int] = mapped_column(Integer, default=1)
    timeout: Mapped[int] = mapped_column(Integer)  # seconds
    data: Mapped[bytes | None] = mapped_column(LargeBinary)  # JSON-encoded input
    result: Mapped[bytes | None] = mapped_column(LargeBinary)  # JSON-encoded output
    data_key: Mapped[str | None] = mapped_column(String(200))  # blob of a large input (`data` NULL): core/payloads.py
    result_key: Mapped[str | None] = mapped_column(String(200))  # blob of a large output (`result` NULL)
    error_message: Mapped[str | None] = mapped_column(Text)
    logs: Mapped[str | None] = mapped_column(Text)
    input_size: Mapped[int] = mapped_column(Integer, default=0)
    output_size: Mapped[int] = mapped_column(Integer, default=0)
    origin: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class PipelineRow(Base):
    """A named DAG of deployments, operators and sub-pipelines, with its own input and output."""

    __tablename__ = "pipelines"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    input_type: Mapped[str] = mapped_column(String(16))
    output_type: Mapped[str] = mapped_column(String(16))
    input_fields: Mapped[list[Any]] = mapped_column(default=list)
    output_fields: Mapped[list[Any]] = mapped_column(default=list)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    default_version_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class PipelineVersionRow(Base):
    """One version of a pipeline: its objects and attachments, validated as a whole when stored."""

    __tablename__ = "pipeline_versions"
    __table_args__ = (UniqueConstraint("pipeline_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    request_retention_mode: Mapped[str] = mapped_column(String(16))
    request_retention_time: Mapped[int] = mapped_column(Integer)  # seconds
    objects: Mapped[list[Any]] = mapped_column(default=list)
    attachments: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class PipelineRequestRow(Base):
    """One run of a pipeline version; `steps` lists its deployment, operator and sub-pipeline requests."""

    __tablename__ = "pipeline_requests"
    __table_args__ = (
        Index("ix_pipeline_requests_version_created", "version_id", "created_at"),
        Index("ix_pipeline_requests_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(36), index=True)
    pipeline_id: Mapped[str] = mapped_column(String(36))
    version_id: Mapped[str] = mapped_column(String(36))
    parent_id: Mapped[str | None] = mapped_column(String(36), index=True)  # set for a sub-pipeline's request
    mode: Mapped[str] = mapped_column(String(8))  # direct / batch
    status: Mapped[str] = mapped_column(String(20))
    owner: Mapped[str | None] = mapped_column(String(36))  # the node that claimed it (`core.nodes`)
    timeout: Mapped[int] = mapped_column(Integer)  # seconds
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    result: Mapped[bytes | None] = mapped_column(LargeBinary)
    data_key: Mapped[str | None] = mapped_column(String(200))  # blob of a large input (`data` NULL)
    result_key: Mapped[str | None] = mapped_column(String(200))  # blob of a large output (`result` NULL)
    error_message: Mapped[str | None] = mapped_column(Text)
    input_size: Mapped[int] = mapped_column(Integer, default=0)
    output_size: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[list[Any]] = mapped_column(default=list)
    origin: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class OperatorRequestRow(Base):
    """One execution of an operator inside a pipeline request."""

    __tablename__ = "operator_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    pipeline_request_id: Mapped[str] = mapped_column(String(36), index=True)
    pipeline_object: Mapped[str] = mapped_column(String(64))
    operator: Mapped[str] = mapped_column(String(32))
    sequence_id: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(20))
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    result: Mapped[bytes | None] = mapped_column(LargeBinary)
    data_key: Mapped[str | None] = mapped_column(String(200))  # blob of a large input (`data` NULL)
    result_key: Mapped[str | None] = mapped_column(String(200))  # blob of a large output (`result` NULL)
    error_message: Mapped[str | None] = mapped_column(Text)
    input_size: Mapped[int] = mapped_column(Integer, default=0)
    output_size: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


#: The condition of a claimed run (runnable, starting or running: `core.runs.CLAIMED`), written out
#: for the partial index of such runs: a query is served by that index only when it says the same.
RUNS_CLAIMED = "status IN ('runnable', 'starting', 'running')"


class RunRow(Base):
    """An asynchronous execution of a version with retries: each attempt is a request."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_deployment_created", "deployment_id", "created_at", "id"),
        Index("ix_runs_status", "status"),
        # A version's claimed runs, which each claim counts (`core.runs`): a few entries per version.
        Index("ix_runs_claimed", "version_id", postgresql_where=text(RUNS_CLAIMED), sqlite_where=text(RUNS_CLAIMED)),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(36), index=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    version_id: Mapped[str] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str | None] = mapped_column(String(36))  # the node that claimed it (`core.nodes`)
    input_data: Mapped[Any] = mapped_column(JSON, nullable=True)
    output_template: Mapped[Any] = mapped_column(JSON, nullable=True)
    retry_count: Mapped[int] = mapped_column(Integer)  # attempts after the first that a failure may use
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # attempts started so far
    distribution: Mapped[int | None] = mapped_column(Integer)
    environment: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the run's own variables
    model_alias: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    modified_at: Mapped[datetime]


class ServiceRow(Base):
    """A named, long-running group of instances of one version, with start/stop and scaling."""

    __tablename__ = "services"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(36), index=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # in_progress / ready / stopped / failed
    owner: Mapped[str | None] = mapped_column(String(36))  # the node that claimed it (`core.nodes`)
    instance_number: Mapped[int] = mapped_column(Integer)
    min_instance_number: Mapped[int] = mapped_column(Integer)
    max_instance_number: Mapped[int] = mapped_column(Integer)
    enable_autoscale: Mapped[bool] = mapped_column(default=False)
    instance_type: Mapped[str] = mapped_column(String(64))
    environment: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_alias: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    modified_at: Mapped[datetime]


class EndpointRow(Base):
    """A deployment's stable name for one of its services: `default` is what the deployment's own
    URL calls. Deleting the service or the deployment deletes the endpoint with it."""

    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("deployment_id", "alias", name="uq_endpoints_deployment_alias"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    service_id: Mapped[str] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    modified_at: Mapped[datetime]


class LogLineRow(Base):
    """One line of a run's or a service's log; `id` orders the lines of one owner."""

    __tablename__ = "log_lines"
    __table_args__ = (Index("ix_log_lines_owner", "owner_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[str] = mapped_column(String(40))
    time: Mapped[datetime]
    message: Mapped[str] = mapped_column(Text)


class WebhookRow(Base):
    """An endpoint that receives signed POSTs, with its retry policy."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(Text)  # base64, as given; never shown again
    max_retries: Mapped[int] = mapped_column(Integer)
    max_backoff_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class DeliveryRow(Base):
    """One body to POST to one webhook, kept until it is delivered or has used up its retries."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_job_item", "job_id", "item_index"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(36), index=True)
    job_id: Mapped[str | None] = mapped_column(String(36))
    item_index: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)  # dropped once delivered
    status: Mapped[str] = mapped_column(String(16))  # pending / delivered / failed / cancelled
    owner: Mapped[str | None] = mapped_column(String(36))  # the node that claimed it (`core.nodes`)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    response_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class DatasetRow(Base):
    """An uploaded file of newline-delimited JSON items; the file itself is a blob."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(24))  # waiting / uploaded / failed_upload / failed_processing
    message: Mapped[str] = mapped_column(Text, default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    crc32c: Mapped[str] = mapped_column(String(16))  # base64 of the big-endian CRC32C, as GCS writes it
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    blob_key: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[datetime]
    upload_expires_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class JobRow(Base):
    """A batch job: a dataset's items run on a deployment, each result sent to webhooks."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[str] = mapped_column(String(36), index=True)
    deployment_id: Mapped[str] = mapped_column(String(36))
    #: For a job on instances of its own (`core.jobs.Ephemeral`, as a dict), else None.
    ephemeral: Mapped[dict[str, Any] | None]
    webhook_ids: Mapped[list[Any]] = mapped_column(default=list)
    start_at: Mapped[datetime | None]
    stop_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16))  # scheduled / running / finished / stopped / failed
    owner: Mapped[str | None] = mapped_column(String(36))  # the node that claimed it (`core.nodes`)
    message: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str | None] = mapped_column(Text)
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    next_item: Mapped[int] = mapped_column(Integer, default=0)  # every item before it has its outcome
    gathered: Mapped[int] = mapped_column(Integer, default=0)
    failed_gather: Mapped[int] = mapped_column(Integer, default=0)
    preprocessed: Mapped[int] = mapped_column(Integer, default=0)
    failed_process: Mapped[int] = mapped_column(Integer, default=0)
    predicted: Mapped[int] = mapped_column(Integer, default=0)
    failed_predict: Mapped[int] = mapped_column(Integer, default=0)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    failed_deliver: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class JobLogRow(Base):
    """A job's log entry: one per item (its outcome, updated as it is delivered), plus job events.

    The unique (job, item) pair is also the record that an item's outcome was committed.
    """

    __tablename__ = "job_logs"
    __table_args__ = (
        UniqueConstraint("job_id", "item_index"),
        Index("ix_job_logs_job_time", "job_id", "created_ms"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36))
    item_index: Mapped[int | None] = mapped_column(Integer)
    created_ms: Mapped[int] = mapped_column(BigInteger)  # unique within a job, so paging by time is exact
    kind: Mapped[str] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(8))
    item: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(24))
    time_ms: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str] = mapped_column(Text, default="")


class ServerSecretRow(Base):
    """A secret every server on the database shares (the URL-signing key, the admin token's hash),
    made once by the first server to start (`core.server_secrets`)."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class NodeRow(Base):
    """One server process on the database: alive while its heartbeat is recent (`core.nodes`)."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))  # host and process, for people reading the table
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    end: Mapped[str | None] = mapped_column(String(16))  # stopped (cleanly) / dead (declared by another node)
    address: Mapped[str | None] = mapped_column(String(300))  # where other nodes reach it (http://host:port)


class InstanceSlotRow(Base):
    """An instance a node runs or starts, counted against its pool's limits across the cluster
    (`core.instance_slots`)."""

    __tablename__ = "instance_slots"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    pool: Mapped[str] = mapped_column(String(100), index=True)  # a version's id, or "service:<id>"
    node_id: Mapped[str] = mapped_column(String(36), index=True)
    taken_at: Mapped[datetime]
    loaded_at: Mapped[datetime | None]  # once its instance has loaded (until then it is starting)


class BlobRow(Base):
    """A blob kept in the database, for nodes that share it (`store.blobs`); its bytes are its chunks."""

    __tablename__ = "blobs"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class BlobChunkRow(Base):
    __tablename__ = "blob_chunks"

    key: Mapped[str] = mapped_column(ForeignKey("blobs.key", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
