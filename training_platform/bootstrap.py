"""First-start and every-start work: migrations, the admin token, the bundled catalog.

Runs under a file lock in TP_HOME, so `tp up` and several API processes can all call it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import Engine

from training_platform.assets import BUNDLED_DATASETS, TINY_MODEL_NAME
from training_platform.auth.service import ensure_admin_token
from training_platform.catalog import service as catalog
from training_platform.core import confine
from training_platform.core.db import get_engine, migrate, session_scope
from training_platform.core.settings import Settings
from training_platform.datasets import versions as dataset_versions
from training_platform.scheduling.service import refresh_local

log = logging.getLogger(__name__)
MODEL_MARKER = "config.json"


def tiny_model_dir(settings: Settings) -> Path:
    """Where the bundled tiny model lives inside TP_HOME."""
    return settings.models_dir / "builtin" / TINY_MODEL_NAME


def build_tiny_model(settings: Settings) -> bool:
    """Build the tiny model in a child process (the API never imports torch); True if present."""
    target = tiny_model_dir(settings)
    if (target / MODEL_MARKER).exists():
        return True
    if importlib.util.find_spec("torch") is None:
        log.warning("torch is not installed here; the tiny model is not built")
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "training_platform.assets", "build-model", str(target)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        log.error("building the tiny model failed:\n%s", done.stderr[-4000:])
        return False
    return True


def _register_assets(engine: Engine, settings: Settings) -> None:
    destination = settings.datasets_dir / "builtin"
    destination.mkdir(parents=True, exist_ok=True)
    with session_scope(engine) as session:
        for bundled in BUNDLED_DATASETS.values():
            target = destination / bundled.file
            if not target.exists() or target.read_bytes() != bundled.path.read_bytes():
                shutil.copyfile(bundled.path, target)
            entry = catalog.upsert_dataset(
                session=session,
                home=settings.home,
                name=bundled.name,
                path=target,
                fmt=bundled.format,
                description=bundled.description,
            )
            dataset_versions.ensure_current(session=session, entry=entry, origin="builtin")
        model_dir = tiny_model_dir(settings)
        if (model_dir / MODEL_MARKER).exists():
            catalog.upsert_builtin_model(
                session=session,
                home=settings.home,
                name=TINY_MODEL_NAME,
                path=model_dir,
                description="Tiny Qwen2 (random weights, local BPE tokenizer) for demos and tests.",
                parameters=None,
            )


def bootstrap(settings: Settings, *, build_model: bool = False) -> Engine:
    """Make TP_HOME ready: schema at head, admin token, bundled model and datasets."""
    settings.home.mkdir(parents=True, exist_ok=True)
    confine.close_home(settings.home)
    engine = get_engine(settings)
    migrate(engine, settings)
    if build_model:
        build_tiny_model(settings)
    with (settings.home / ".bootstrap.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with session_scope(engine) as session:
            ensure_admin_token(session=session, token_file=settings.admin_token_file)
        _register_assets(engine, settings)
        # The API validates GPU requests against the inventory: have one from the first start.
        refresh_local(engine, settings)
        # The database closed to others, and (as root) the user runs execute as, created.
        confine.prepare(settings)
    return engine
