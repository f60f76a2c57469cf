"""Jobs the cluster tests and the cluster benchmark submit (small: the transport is under test)."""

from __future__ import annotations

from typing import Any

from omost_engine.canvas import Canvas
from omost_engine.canvas_code import parse
from omost_engine.jobs import ComposeJob, RenderJob
from omost_engine.llm.base import ChatMessage
from omost_engine.render.base import RenderParams
from tests.fakes.fake_backends import seed_answers, seed_conversation

_SEED = parse(seed_answers()[0])
CANVAS = Canvas(_SEED.global_description, _SEED.regions[:1])
"""The seed's first canvas cut to one region: a short answer for the fake LLM."""

FIRST_REQUEST: ChatMessage = seed_conversation()[0]
TINY = RenderParams(width=128, height=128, steps=3)


def render_job(owner: str, job_id: str, params: RenderParams = TINY, **fields: Any) -> RenderJob:
    return RenderJob(owner=owner, canvas=CANVAS, params=params, job_id=job_id, **fields)


def compose_job(owner: str, job_id: str, **fields: Any) -> ComposeJob:
    return ComposeJob(owner=owner, messages=(FIRST_REQUEST,), job_id=job_id, **fields)
