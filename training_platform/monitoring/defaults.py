"""The platform's default alert rules: what a job gets when its submission sets no `alerts`.

They are copied into the job's spec at submission, so a job's rules never change afterwards;
changing the defaults affects only jobs submitted later. Functions flush; the caller commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session

from training_platform.core.db import insert_for
from training_platform.core.types import utcnow
from training_platform.jobs.schemas import AlertRule
from training_platform.monitoring.models import PlatformSetting

DEFAULT_ALERT_RULES = "default_alert_rules"
MAX_RULES = 32  # as many as one job may have


def default_rules(*, session: Session) -> tuple[list[AlertRule], datetime | None]:
    """The stored default rules and when they were last set (empty and None: never set)."""
    setting = session.get(PlatformSetting, DEFAULT_ALERT_RULES)
    if setting is None:
        return [], None
    return [AlertRule.model_validate(rule) for rule in setting.value], setting.updated_at


def set_default_rules(
    *, session: Session, rules: Sequence[AlertRule]
) -> tuple[list[AlertRule], datetime]:
    """Replace the default rules as a whole; returns what is stored now."""
    value = [rule.model_dump(mode="json") for rule in rules]
    statement = insert_for(session, PlatformSetting).values(
        key=DEFAULT_ALERT_RULES, value=value, updated_at=utcnow()
    )
    # One statement, so that two first writers at once cannot both try to insert the row.
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["key"],
            set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at},
        )
    )
    stored = session.get(PlatformSetting, DEFAULT_ALERT_RULES, populate_existing=True)
    assert stored is not None
    return [AlertRule.model_validate(rule) for rule in stored.value], stored.updated_at
