"""Jobs and events <-> JSON, for the trip through Redis.

Owns the wire form of `ComposeJob`, `RenderJob` and every `JobEvent` (jobs.py). Only plain JSON
and PNG bytes cross: nothing read back from Redis is ever unpickled, executed or evaluated, and
every dataclass is rebuilt field by field, so a hostile or corrupt entry can at worst fail to
decode (`CodecError`).

Images (a finished render, a step preview) travel as PNG bytes in their own stream field, not
inside the JSON; `encode_event` refuses a finished image above `max_image_bytes`, so one huge
result cannot fill Redis' memory.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import asdict, fields
from typing import Any

from PIL import Image

from omost_engine.canvas import Canvas, CanvasError, Correction, GlobalDescription, Region
from omost_engine.canvas_code import CanvasEvent, GlobalParsed, RegionParsed
from omost_engine.errors import EngineError
from omost_engine.jobs import (
    Cancelled,
    ComposeJob,
    ComposeResult,
    Failed,
    FailureKind,
    Finished,
    Job,
    JobEvent,
    PartParsed,
    Queued,
    RenderJob,
    Repairing,
    Started,
    TextDelta,
)
from omost_engine.llm.base import ChatMessage, GenerationParams, GenerationStats
from omost_engine.render.base import RenderParams, RenderResult, Step
from omost_engine.render.edit_plan import EditSpec


class CodecError(EngineError):
    """An entry in Redis could not be decoded (a newer or older version, or corruption)."""


class ImageTooLarge(EngineError):
    """A finished image is bigger than the cluster's transport bound."""


Fields = dict[str, bytes | str]
"""One stream entry: a `type`, a JSON `data` field and, for images, a PNG `image` field."""


# --- jobs -----------------------------------------------------------------------------------------


def _canvas_to_dict(canvas: Canvas) -> dict[str, Any]:
    return asdict(canvas)


def _canvas_from_dict(data: dict[str, Any]) -> Canvas:
    g = data["global_description"]
    glob = GlobalDescription(
        description=str(g["description"]),
        detailed_descriptions=tuple(str(s) for s in g["detailed_descriptions"]),
        tags=str(g["tags"]),
        color=str(g["color"]),
    )
    return Canvas(
        global_description=glob,
        regions=tuple(_region(r) for r in data["regions"]),
        corrections=tuple(_plain(Correction, c) for c in data.get("corrections", ())),
    )


def _region(data: dict[str, Any]) -> Region:
    values = {f.name: data[f.name] for f in fields(Region)}
    values["detailed_descriptions"] = tuple(str(s) for s in values["detailed_descriptions"])
    values["distance_to_viewer"] = float(values["distance_to_viewer"])
    return Region(**values)


def _plain(cls: Any, data: dict[str, Any]) -> Any:
    """A flat dataclass from its fields (extra keys ignored: an older reader of a newer writer)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _params_to_dict(params: RenderParams) -> dict[str, Any]:
    """RenderParams as JSON data; an edit's parent picture travels as base64."""
    data = asdict(params)
    if params.edit is not None:
        data["edit"] = {
            **asdict(params.edit),
            "parent_png": base64.b64encode(params.edit.parent_png).decode(),
        }
    return data


def _params_from_dict(data: dict[str, Any]) -> RenderParams:
    edit = data.get("edit")
    spec = None
    if edit is not None:
        spec = _plain(
            EditSpec,
            {
                **edit,
                "parent_png": base64.b64decode(edit["parent_png"], validate=True),
                "boxes": tuple(tuple(int(v) for v in box) for box in edit["boxes"]),
            },
        )
    params: RenderParams = _plain(RenderParams, {**data, "edit": spec})
    return params


def encode_job(job: Job) -> str:
    common = {"owner": job.owner, "tag": job.tag, "timeout_s": job.timeout_s, "job_id": job.job_id}
    if isinstance(job, ComposeJob):
        body = {
            "messages": [{"role": m.role, "content": m.content} for m in job.messages],
            "params": asdict(job.params),
        }
    else:
        body = {"canvas": _canvas_to_dict(job.canvas), "params": _params_to_dict(job.params)}
    return json.dumps({"kind": job.kind, **common, **body}, separators=(",", ":"))


def decode_job(text: str | bytes) -> Job:
    try:
        data = json.loads(text)
        common = {
            "owner": str(data["owner"]),
            "tag": str(data["tag"]),
            "timeout_s": data["timeout_s"],
            "job_id": str(data["job_id"]),
        }
        if data["kind"] == "compose":
            messages = tuple(ChatMessage(role=m["role"], content=str(m["content"])) for m in data["messages"])
            return ComposeJob(messages=messages, params=_plain(GenerationParams, data["params"]), **common)
        if data["kind"] == "render":
            canvas = _canvas_from_dict(data["canvas"])
            return RenderJob(canvas=canvas, params=_params_from_dict(data["params"]), **common)
    except (KeyError, TypeError, ValueError) as e:
        raise CodecError(f"a job in the cluster could not be read: {e!r}") from e
    raise CodecError(f"a job in the cluster has an unknown kind {data.get('kind')!r}")


# --- events ---------------------------------------------------------------------------------------


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _part_to_dict(part: CanvasEvent) -> dict[str, Any]:
    if isinstance(part, GlobalParsed):
        return {"global": asdict(part.global_description), "line": part.line}
    return {"region": asdict(part.region), "index": part.index, "line": part.line}


def _part_from_dict(data: dict[str, Any]) -> CanvasEvent:
    if "global" in data:
        g = data["global"]
        glob = GlobalDescription(
            description=g["description"],
            detailed_descriptions=tuple(g["detailed_descriptions"]),
            tags=g["tags"],
            color=g["color"],
        )
        return GlobalParsed(global_description=glob, line=int(data["line"]))
    return RegionParsed(index=int(data["index"]), region=_region(data["region"]), line=int(data["line"]))


def _compose_result(result: ComposeResult) -> dict[str, Any]:
    error = result.parse_error
    return {
        "text": result.text,
        "canvas": None if result.canvas is None else _canvas_to_dict(result.canvas),
        "parse_error": None if error is None else {"reason": error.reason, "line": error.line},
        "stats": asdict(result.stats),
        "repaired": result.repaired,
    }


def _compose_result_from(data: dict[str, Any]) -> ComposeResult:
    error = data["parse_error"]
    return ComposeResult(
        text=data["text"],
        canvas=None if data["canvas"] is None else _canvas_from_dict(data["canvas"]),
        parse_error=None if error is None else CanvasError(error["reason"], error["line"]),
        stats=_plain(GenerationStats, data["stats"]),
        repaired=bool(data.get("repaired", False)),
    )


def encode_event(event: JobEvent, *, max_image_bytes: int) -> Fields:
    """One stream entry for `event`. Raises ImageTooLarge for a finished image over the bound."""
    kind = type(event).__name__
    image: bytes | None = None
    data: dict[str, Any]
    if isinstance(event, Queued | Started | TextDelta | Repairing | Failed | Cancelled):
        data = asdict(event)
    elif isinstance(event, PartParsed):
        data = _part_to_dict(event.part)
    elif isinstance(event, Step):
        data = {"index": event.index, "total": event.total, "phase": event.phase}
        image = None if event.preview is None else png_bytes(event.preview)
    elif isinstance(event.result, ComposeResult):
        data = {"compose": _compose_result(event.result)}
    else:
        result = event.result
        image = png_bytes(result.image)
        if len(image) > max_image_bytes:
            raise ImageTooLarge(
                f"The finished picture is {len(image) / 2**20:.1f} MiB, more than the render cluster "
                f"carries ({max_image_bytes / 2**20:.1f} MiB, queue.max_result_mib)."
            )
        data = {
            "render": {
                "params": _params_to_dict(result.params),
                "model": result.model,
                "seconds": result.seconds,
                "metadata": result.metadata,
            }
        }
    entry: Fields = {"type": kind, "data": json.dumps(data, separators=(",", ":"))}
    if image is not None:
        entry["image"] = image
    return entry


def decode_event(entry: dict[bytes, bytes]) -> JobEvent:
    """The event from one stream entry (keys and values as redis-py returns them: bytes)."""
    try:
        kind = entry[b"type"].decode()
        data = json.loads(entry[b"data"])
        image = entry.get(b"image")
        return _EVENT_DECODERS[kind](data, image)
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise CodecError(f"an event from the render cluster could not be read: {e!r}") from e


def _finished(data: dict[str, Any], image: bytes | None) -> Finished:
    if "compose" in data:
        return Finished(_compose_result_from(data["compose"]))
    if image is None:
        raise ValueError("a finished render without its image")
    r = data["render"]
    return Finished(
        RenderResult(
            image=_image(image),
            params=_params_from_dict(r["params"]),
            model=r["model"],
            seconds=float(r["seconds"]),
            metadata={str(k): str(v) for k, v in r["metadata"].items()},
        )
    )


_EVENT_DECODERS: dict[str, Any] = {
    "Queued": lambda d, _: Queued(int(d["position"]), d["eta_s"]),
    "Started": lambda d, _: Started(int(d["attempt"])),
    "TextDelta": lambda d, _: TextDelta(str(d["text"])),
    "Repairing": lambda d, _: Repairing(str(d["error"])),
    "PartParsed": lambda d, _: PartParsed(_part_from_dict(d)),
    "Step": lambda d, img: Step(
        int(d["index"]), int(d["total"]), None if img is None else _image(img), d["phase"]
    ),
    "Finished": _finished,
    "Failed": lambda d, _: Failed(str(d["message"]), FailureKind(d["kind"])),
    "Cancelled": lambda d, _: Cancelled(str(d["reason"])),
}
