"""Every router of the Datature dialect, served at `/projects/…` (the SDK drops any path prefix)."""

from __future__ import annotations

from fastapi import APIRouter

from modelbay.dialects.datature.artifacts import router as artifacts
from modelbay.dialects.datature.datasets import router as datasets
from modelbay.dialects.datature.deployments import router as deployments
from modelbay.dialects.datature.jobs import router as jobs
from modelbay.dialects.datature.webhooks import router as webhooks

routers: list[APIRouter] = [webhooks, datasets, jobs, deployments, artifacts]
