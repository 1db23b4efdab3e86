"""Projects' GPU quotas in the scheduling pass: maxima, fair share, guarantees, preemption.

- A job waits while its project holds `max_gpus` (or its user `user_max_gpus` in that
  project) and it would go beyond.
- Fair share: among jobs of one priority, the project that has used the fewest GPU-hours for
  its share goes first. GPU-hours decay: an hour `fair_share_half_life_h` ago counts half.
  A project's share is its guarantee (at least one GPU).
- A job placed while its project would hold more than its guarantee is preemptible. A job
  that would stay within its project's guarantee and does not fit has preemptible jobs of
  projects above their own guarantee paused (checkpoint and stop, the pause path users have)
  - the most recently started first - until enough GPUs will be free; each is requeued as
  soon as it has paused (jobs/supervisor.py) and resumes from that checkpoint, exactly.

Work without a project counts as the default project's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from training_platform.core.types import utcnow
from training_platform.jobs.models import Job
from training_platform.projects.models import DEFAULT_PROJECT, Project
from training_platform.scheduling.models import DeviceLease
from training_platform.scheduling.placement import Slot

log = logging.getLogger(__name__)
# How far back GPU-hours are read: beyond ten half-lives they weigh under a thousandth.
HISTORY_HALF_LIVES = 10


@dataclass
class Holder:
    """A job holding GPUs now."""

    job_id: int
    project_id: int | None
    gpus: int = 0
    preemptible: bool = False
    being_preempted: bool = False
    status: str = ""
    started_at: datetime | None = None


@dataclass
class Shares:
    """The projects, what each holds now and its decayed GPU-hours, for one pass."""

    projects: dict[int, Project]
    default_id: int | None
    used: dict[int | None, int] = field(default_factory=dict)
    user_used: dict[tuple[int | None, int | None], int] = field(default_factory=dict)
    hours: dict[int | None, float] = field(default_factory=dict)
    holders: dict[int, Holder] = field(default_factory=dict)
    promised: int = 0  # GPUs being freed by preemption, promised to waiting jobs this pass

    def project_of(self, project_id: int | None) -> int | None:
        return project_id if project_id in self.projects else self.default_id

    def _project(self, project_id: int | None) -> Project | None:
        key = self.project_of(project_id)
        return self.projects.get(key) if key is not None else None

    def guarantee(self, project_id: int | None) -> int:
        project = self._project(project_id)
        return project.guaranteed_gpus if project else 0

    def standing(self, project_id: int | None) -> float:
        """Decayed GPU-hours per GPU of share: the lower, the sooner its jobs go."""
        key = self.project_of(project_id)
        return self.hours.get(key, 0.0) / max(self.guarantee(key), 1)

    def over_limit(self, job: Job, gpus: int) -> str | None:
        """Why the job must wait for its project's (or user's) maximum, if it must."""
        project = self._project(job.project_id)
        if project is None or gpus == 0:
            return None
        key = self.project_of(job.project_id)
        held = self.used.get(key, 0)
        if project.max_gpus is not None and held + gpus > project.max_gpus:
            return (
                f"waiting: project {project.name} holds {held} of its maximum of "
                f"{project.max_gpus} GPU(s)"
            )
        mine = self.user_used.get((key, job.user_id), 0)
        if project.user_max_gpus is not None and mine + gpus > project.user_max_gpus:
            return (
                f"waiting: its user holds {mine} of the {project.user_max_gpus} GPU(s) each "
                f"member of project {project.name} may hold"
            )
        return None

    def above_guarantee(self, job: Job, gpus: int) -> bool:
        """Whether placing the job would take its project beyond its guarantee."""
        key = self.project_of(job.project_id)
        return gpus > 0 and self.used.get(key, 0) + gpus > self.guarantee(key)

    def hold(self, job: Job, gpus: int) -> None:
        key = self.project_of(job.project_id)
        self.used[key] = self.used.get(key, 0) + gpus
        self.user_used[(key, job.user_id)] = self.user_used.get((key, job.user_id), 0) + gpus


def _decayed_hours(start: datetime, end: datetime, now: datetime, half_life_h: float) -> float:
    """GPU-hours of one GPU from start to end, each moment weighted 2^-(age / half-life)."""
    if end <= start:
        return 0.0
    rate = math.log(2) / half_life_h
    age_end = (now - end) / timedelta(hours=1)
    age_start = (now - start) / timedelta(hours=1)
    return (math.exp(-rate * age_end) - math.exp(-rate * age_start)) / rate


def read(session: Session, now: datetime, half_life_h: float) -> Shares:
    """Projects, who holds which GPUs, and each project's decayed GPU-hours."""
    projects = {p.id: p for p in session.exec(select(Project)).all() if p.id is not None}
    default_id = next((i for i, p in projects.items() if p.name == DEFAULT_PROJECT), None)
    shares = Shares(projects=projects, default_id=default_id)
    horizon = now - timedelta(hours=half_life_h * HISTORY_HALF_LIVES)
    columns: list[Any] = [
        DeviceLease.acquired_at,
        DeviceLease.released_at,
        Job.id,
        Job.project_id,
        Job.user_id,
        Job.preemptible,
        Job.preempted_at,
        Job.status,
        Job.started_at,
    ]
    rows = session.execute(
        sa_select(*columns)
        .join(Job, col(Job.id) == col(DeviceLease.job_id))
        .where(
            col(DeviceLease.kind) == "gpu",
            col(DeviceLease.released_at).is_(None) | (col(DeviceLease.released_at) > horizon),
        )
    ).all()
    for (
        acquired,
        released,
        job_id,
        project_id,
        user_id,
        preemptible,
        preempted,
        status,
        started,
    ) in rows:
        key = shares.project_of(project_id)
        start = max(acquired, horizon)
        shares.hours[key] = shares.hours.get(key, 0.0) + _decayed_hours(
            start, min(released or now, now), now, half_life_h
        )
        if released is None:
            shares.used[key] = shares.used.get(key, 0) + 1
            shares.user_used[(key, user_id)] = shares.user_used.get((key, user_id), 0) + 1
            holder = shares.holders.setdefault(
                job_id,
                Holder(
                    job_id=job_id,
                    project_id=key,
                    preemptible=preemptible,
                    being_preempted=preempted is not None,
                    status=status,
                    started_at=started,
                ),
            )
            holder.gpus += 1
    return shares


def preempt_for(
    engine: Engine,
    job: Job,
    gpus: int,
    available: list[Slot],
    shares: Shares,
) -> str:
    """Make room for a job within its project's guarantee: pause the newest preemptible jobs
    of projects above their guarantee until enough GPUs will be free. What was done, as the
    end of the job's wait reason."""
    from training_platform.jobs import service as jobs

    free = sum(1 for slot in available if slot.kind == "gpu")
    # GPUs that preempted jobs are freeing, less those promised to jobs before this one.
    spare = sum(h.gpus for h in shares.holders.values() if h.being_preempted) - shares.promised
    if free + spare >= gpus:
        shares.promised += max(gpus - free, 0)
        return "; GPUs are being freed for it by preemption" if gpus > free else ""
    mine = shares.project_of(job.project_id)
    excess = {
        key: shares.used.get(key, 0) - shares.guarantee(key)
        for key in {h.project_id for h in shares.holders.values()}
    }
    candidates = sorted(
        (
            h
            for h in shares.holders.values()
            if h.preemptible
            and not h.being_preempted
            and h.status == "running"
            and h.project_id != mine
        ),
        key=lambda h: h.started_at.timestamp() if h.started_at else 0.0,
        reverse=True,
    )
    need = gpus - free - max(spare, 0)
    chosen: list[int] = []
    for holder in candidates:
        if need <= 0:
            break
        if excess.get(holder.project_id, 0) < holder.gpus:
            continue  # it would take its own project below its guarantee
        with Session(engine) as session:
            try:
                jobs.pause(
                    session=session, job_id=holder.job_id, actor="scheduler", mode="checkpoint"
                )
                session.execute(
                    update(Job)
                    .where(col(Job.id) == holder.job_id)
                    .values(preempted_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
                session.commit()
            except Exception as error:  # moved meanwhile, or cannot checkpoint on request
                log.info("job %s not preempted: %s", holder.job_id, error)
                continue
        holder.being_preempted = True
        excess[holder.project_id] -= holder.gpus
        need -= holder.gpus
        chosen.append(holder.job_id)
        log.info("job %s preempted for job %s (within its guarantee)", holder.job_id, job.id)
    if not chosen:
        return ""
    shares.promised += max(gpus - free, 0)
    listed = ", ".join(str(i) for i in chosen)
    return f"; preempting job(s) {listed} (above their projects' guarantees) to free GPUs for it"
