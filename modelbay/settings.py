"""The one Settings object. Nothing else reads the environment for configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RayInstanceType(BaseModel):
    """The Ray resources an instance of one instance type asks for."""

    model_config = {"extra": "forbid"}

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory_mib: int | None = Field(None, ge=1, description="Ray's memory resource (default: the memory limit).")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom resources of the nodes.")


class Settings(BaseSettings):
    """Server settings, read from `MODELBAY_*` environment variables, with embedded defaults."""

    model_config = SettingsConfigDict(env_prefix="MODELBAY_", extra="ignore")

    data_dir: Path = Field(Path(".modelbay"), description="Where the database, blobs, builds and logs live.")
    host: str = Field("127.0.0.1", description="Address the server listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the server listens on.")
    database_url: str | None = Field(
        None,
        description="Database URL, e.g. postgresql://user:password@host/modelbay (the `postgres` extra); "
        "default is a SQLite file in the data dir.",
    )
    admin_token: str | None = Field(
        None,
        description="Token that may act in every project; if unset, the first server on the database generates "
        "one (kept in its data dir, its hash in the database).",
    )
    runtime: Literal["local", "ray"] = Field(
        "local", description="Where instances run: 'local' processes, or actors on a Ray cluster ('ray', with the "
        "`ray` extra).",
    )
    ray_address: str | None = Field(
        None, description="The Ray cluster to place instances on (host:port of its head); none: the server starts a "
        "local Ray instance.",
    )
    ray_namespace: str = Field("modelbay", description="The Ray namespace of the server's actors.")
    ray_instance_types: dict[str, RayInstanceType] = Field(
        default_factory=dict,
        description='Ray resources per instance type, as JSON: {"gpu": {"num_cpus": 4, "num_gpus": 1, '
        '"memory_mib": 16384}}; another type asks for one CPU and its memory limit.',
    )
    ray_node_dir: Path = Field(
        Path("/tmp/modelbay-ray"), description="Where each Ray node keeps the code and environments of its "
        "instances, and their logs and scratch directories.",
    )
    uv_cache_dir: Path | None = Field(None, description="Package cache of builds (one folder per project); <data dir>/builds/uv-cache if unset.")
    max_log_bytes: int = Field(1 << 20, ge=1024, description="What one request may print before it is failed.")
    max_request_bytes: int = Field(64 << 20, ge=1024, description="Largest request body accepted.")
    instance_start_timeout_s: float = Field(120.0, gt=0, description="How long an instance may take to load.")
    instance_call_depth: int = Field(
        4, ge=1, le=16,
        description="How many calls a local instance is sent at once once its version runs its maximum of "
                    "instances: it runs one, the others wait in it, so the next starts as soon as one ends. Quick "
                    "batch calls may wait up to four times as deep (see `core.scheduler`).")
    build_workers: int = Field(2, ge=1, description="Builds that run at the same time.")
    service_scale_down_idle_s: float = Field(
        60.0, gt=0, description="How long an autoscaled service keeps an idle instance above its minimum."
    )
    abeja_host: str = Field(
        "", description="The public host name the ABEJA service proxy answers on: requests to "
        "<organization_id>.<abeja_host>[:port]; empty: <organization_id>. followed by any host.",
    )
    webhook_allow_private_targets: bool = Field(
        False, description="Let webhooks POST to loopback, link-local and private addresses (refused by default)."
    )
    node_lease_s: float = Field(
        10.0, gt=0, description="How long a server of a cluster may miss its heartbeat (sent every fifth of "
        "it) before another one takes back the work it had claimed.",
    )
    node_url: str | None = Field(
        None, description="Where the other servers of a cluster reach this one (http://host:port); by default "
        "its listening address, with this machine's name when it listens on every address.",
    )
    log_level: str = Field("info", description="Server log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="How the server logs: 'text' lines, or 'json': one object per line with time, level, "
        "logger, message and the event's fields.",
    )
    access_log: bool = Field(
        False, description="Log every HTTP request (uvicorn's access log). Off by default: a line per request costs "
        "the direct-request path CPU.",
    )
    sandbox: Literal["bwrap", "none"] = Field(
        "bwrap", description="Where user code runs: 'bwrap' (bubblewrap) or 'none' (on the host: unsafe)."
    )
    sandbox_network: bool = Field(True, description="Whether sandboxed user code may use the network.")
    sandbox_shared_dirs: str = Field(
        "", description="Host directories (':'-separated) every instance sees read-write, e.g. a model cache."
    )
    instance_memory_mib: int = Field(
        2048, ge=64, description="Memory limit of an instance whose instance type names no size (e.g. '512mb')."
    )

    @property
    def shared_dirs(self) -> list[Path]:
        return [Path(p).absolute() for p in self.sandbox_shared_dirs.split(":") if p]

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            # A plain postgresql:// URL means psycopg 3 (the `postgres` extra), not SQLAlchemy's default psycopg2.
            for plain in ("postgresql://", "postgres://"):
                if self.database_url.startswith(plain):
                    return "postgresql+psycopg://" + self.database_url[len(plain) :]
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'modelbay.db').resolve()}"
