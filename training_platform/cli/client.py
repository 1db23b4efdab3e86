"""The one HTTP client the CLI uses to talk to the API."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from training_platform.core.settings import Settings


def _chunks(handle: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    while block := handle.read(size):
        yield block


class ApiError(Exception):
    """The API answered with an error, or could not be reached."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def describe_error(status: int, body: Any) -> str:
    """A one-line explanation from an error response."""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for item in detail:
            loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query", "path")]
            where = ".".join(loc)
            parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return "; ".join(parts)
    return str(detail) if detail else f"HTTP {status}"


def credentials_file() -> Path:
    """Where `tp login` keeps this OS user's tokens, one per API URL (mode 0600)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "training_platform" / "credentials.json"


def saved_tokens() -> dict[str, str]:
    """The tokens `tp login` saved, by API URL."""
    try:
        found = json.loads(credentials_file().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def save_token(api_url: str, token: str | None) -> Path:
    """Keep (or, with None, forget) the token for this API URL."""
    path = credentials_file()
    tokens = saved_tokens()
    if token is None:
        tokens.pop(api_url, None)
    else:
        tokens[api_url] = token
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(tokens, handle, indent=1)
    temporary.replace(path)
    return path


def read_token(settings: Settings) -> str | None:
    """TP_TOKEN, else the token `tp login` saved for this API, else the admin token file in
    TP_HOME (readable by the platform's operator only)."""
    if settings.token is not None:
        return settings.token.get_secret_value()
    saved = saved_tokens().get(settings.resolved_api_url)
    if saved:
        return saved
    try:
        return settings.admin_token_file.read_text().strip()
    except OSError:
        return None


class ApiClient:
    """Thin typed wrapper over the REST API."""

    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.base_url = base_url

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiClient:
        """A client for the API these settings point at."""
        return cls(settings.resolved_api_url, read_token(settings))

    def close(self) -> None:
        """Release the connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API; decoded JSON on success, ApiError otherwise."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ApiError(None, f"cannot reach the API at {self.base_url}: {error}") from None
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            raise ApiError(response.status_code, describe_error(response.status_code, body))
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def submit_job(self, spec: dict[str, Any], idempotency_key: str | None = None) -> Any:
        """POST /jobs."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", "/api/v1/jobs", json=spec, headers=headers)

    def plan_request(self, spec: dict[str, Any]) -> Any:
        """POST /jobs/plan (dry run)."""
        return self.request("POST", "/api/v1/jobs/plan", json=spec)

    def list_jobs(self, statuses: list[str], limit: int, offset: int = 0) -> Any:
        """GET /jobs."""
        params: list[tuple[str, str | int]] = [("limit", limit), ("offset", offset)]
        params += [("status", s) for s in statuses]
        return self.request("GET", "/api/v1/jobs", params=params)

    def job(self, job_id: int) -> Any:
        """GET /jobs/{id}."""
        return self.request("GET", f"/api/v1/jobs/{job_id}")

    def job_action(self, job_id: int, action: str, **params: Any) -> Any:
        """POST /jobs/{id}/{action} (`tp down --jobs` cancels with it)."""
        return self.request("POST", f"/api/v1/jobs/{job_id}/{action}", params=params)

    def submit_pipeline(self, body: dict[str, Any], idempotency_key: str | None = None) -> Any:
        """POST /pipelines."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", "/api/v1/pipelines", json=body, headers=headers)

    def validate_pipeline(self, body: dict[str, Any]) -> Any:
        """POST /pipelines/validate (nothing is stored)."""
        return self.request("POST", "/api/v1/pipelines/validate", json=body)

    def upload(self, kind: str, path: Path, **params: Any) -> Any:
        """POST /datasets or /rewards with the file as the streamed body."""
        with path.open("rb") as handle:
            return self.request(
                "POST",
                f"/api/v1/{kind}",
                params=params,
                content=_chunks(handle),
                headers={"Content-Type": "application/octet-stream"},
            )

    def register_model(self, body: dict[str, Any]) -> Any:
        """POST /models."""
        return self.request("POST", "/api/v1/models", json=body)

    def get(self, path: str) -> Any:
        """GET any API path."""
        return self.request("GET", f"/api/v1/{path}")

    def logs(self, job_id: int, offset: int, attempt: int | None = None) -> Any:
        """GET /jobs/{id}/logs."""
        params: dict[str, int] = {"offset": offset}
        if attempt is not None:
            params["attempt"] = attempt
        return self.request("GET", f"/api/v1/jobs/{job_id}/logs", params=params)

    def metrics(
        self, job_id: int, since_step: int | None = None, keys: list[str] | None = None
    ) -> Any:
        """GET /jobs/{id}/metrics."""
        params: list[tuple[str, str | int]] = [("key", k) for k in keys or []]
        if since_step is not None:
            params.append(("since_step", since_step))
        return self.request("GET", f"/api/v1/jobs/{job_id}/metrics", params=params)

    def job_part(self, job_id: int, part: str) -> Any:
        """GET /jobs/{id}/{events|checkpoints|plan}."""
        return self.request("GET", f"/api/v1/jobs/{job_id}/{part}")

    def catalog(self, kind: str) -> Any:
        """GET /models or /datasets."""
        return self.request("GET", f"/api/v1/{kind}")

    def ready(self) -> Any:
        """GET /readyz (no token needed)."""
        response = self._http.get("/readyz")
        return response.json()
