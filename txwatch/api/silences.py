"""HTTP API for silences: ``GET/POST /api/v1/silences``, ``DELETE /api/v1/silences/{id}`` (bearer token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field

from txwatch.alerts.silences import SilenceError, add_silence, list_silences, remove_silence, silence_dict
from txwatch.api.deps import Services, get_services, require_token

router = APIRouter(prefix="/api/v1/silences", tags=["silences"], dependencies=[Depends(require_token)])


class SilenceIn(BaseModel):
    """A new silence: a run (``run`` or ``project/run``) and/or a project, optionally one rule, for a while."""

    model_config = ConfigDict(extra="forbid")

    run: str | None = Field(default=None, max_length=401, description="run name, or project/run")
    project: str | None = Field(default=None, max_length=200)
    rule: str | None = Field(default=None, max_length=100, description="rule id; all rules when omitted")
    duration: str = Field(max_length=40, description="how long: 30m, 2h, 1h30m, 1d (at most 90d)", examples=["2h"])
    comment: str = Field(default="", max_length=2000)
    created_by: str = Field(default="", max_length=100)


class SilenceOut(BaseModel):
    id: int
    project: str | None
    run: str | None
    rule: str | None
    created: str
    expires: str
    active: bool
    comment: str
    created_by: str


class SilenceList(BaseModel):
    silences: list[SilenceOut]


@router.get("", response_model=SilenceList)
def get_silences(
    include_expired: bool = Query(False, description="also list silences that have ended"),
    services: Services = Depends(get_services),
) -> dict[str, Any]:
    """Silences, soonest to end first (active ones unless ``include_expired``)."""
    with services.session_factory() as s:
        return {"silences": [silence_dict(x) for x in list_silences(s, include_expired=include_expired)]}


@router.post("", response_model=SilenceOut, status_code=status.HTTP_201_CREATED)
def post_silence(body: SilenceIn, services: Services = Depends(get_services)) -> dict[str, Any]:
    """Add a silence; 422 names the field that was wrong."""
    try:
        with services.session_factory() as s, s.begin():
            silence = add_silence(
                s, run=body.run, project=body.project, rule=body.rule, duration=body.duration,
                comment=body.comment, created_by=body.created_by,
            )
            return silence_dict(silence)
    except SilenceError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


@router.delete("/{silence_id}")
def delete_silence(
    silence_id: int = Path(ge=1, le=2**31 - 1, description="the silence's id"),
    services: Services = Depends(get_services),
) -> dict[str, Any]:
    """Remove a silence; 404 when there is none with that id."""
    with services.session_factory() as s, s.begin():
        if not remove_silence(s, silence_id):
            raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"no silence with id {silence_id}")
    return {"removed": silence_id}
