"""Imports every table module so that SQLModel.metadata is complete (migrations, tests)."""

from sqlmodel import SQLModel

from training_platform.auth.models import ApiToken, AuditEvent, User
from training_platform.catalog.models import (
    DatasetEntry,
    ModelEntry,
    ModelLineage,
    RewardFileEntry,
)
from training_platform.compute.models import MemoryPrediction
from training_platform.datasets.models import DatasetAnalysis, DatasetDedup, DatasetVersion
from training_platform.evaluation.models import (
    EvalSuite,
    Evaluation,
    EvaluationSample,
    EvaluationScore,
    EvaluationScoring,
    Rubric,
    SuiteRun,
)
from training_platform.hosts.models import RemoteHost
from training_platform.jobs.models import Checkpoint, Job, JobEvent, JobLogChunk, JobMetric
from training_platform.monitoring.models import (
    Alert,
    GpuSample,
    NotificationCursor,
    PlatformSetting,
    Webhook,
    WebhookDelivery,
)
from training_platform.pipelines.models import (
    Pipeline,
    PipelineEvent,
    PipelineStage,
    PipelineStageRun,
)
from training_platform.projects.models import Project, ProjectMember
from training_platform.scheduling.models import DeviceLease, GpuDevice, Host
from training_platform.serving.models import Endpoint
from training_platform.surgery.models import GreedySoup, Merge, Sweep

metadata = SQLModel.metadata

__all__ = [
    "Alert",
    "ApiToken",
    "AuditEvent",
    "Checkpoint",
    "DatasetAnalysis",
    "DatasetDedup",
    "DatasetEntry",
    "DatasetVersion",
    "DeviceLease",
    "Endpoint",
    "EvalSuite",
    "Evaluation",
    "EvaluationSample",
    "EvaluationScore",
    "EvaluationScoring",
    "GpuDevice",
    "GpuSample",
    "GreedySoup",
    "Host",
    "Job",
    "JobEvent",
    "JobLogChunk",
    "JobMetric",
    "MemoryPrediction",
    "Merge",
    "ModelEntry",
    "ModelLineage",
    "NotificationCursor",
    "Pipeline",
    "PipelineEvent",
    "PipelineStage",
    "PipelineStageRun",
    "PlatformSetting",
    "Project",
    "ProjectMember",
    "RemoteHost",
    "RewardFileEntry",
    "Rubric",
    "SuiteRun",
    "Sweep",
    "User",
    "Webhook",
    "WebhookDelivery",
    "metadata",
]
