"""The cluster's parts that need no server: the wire codec, the [queue] config keys, the bot's
choice of engine and the worker's model loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bot.config import ConfigError, load_config
from bot.worker import cluster_engine, cluster_url, load_models
from omost_engine.canvas import CanvasError
from omost_engine.canvas_code import IncrementalParser, to_answer
from omost_engine.cluster.codec import (
    CodecError,
    ImageTooLarge,
    decode_event,
    decode_job,
    encode_event,
    encode_job,
)
from omost_engine.engine import Engine
from omost_engine.engine_api import JobEngine
from omost_engine.jobs import (
    Cancelled,
    ComposeResult,
    Failed,
    FailureKind,
    Finished,
    JobEvent,
    PartParsed,
    Queued,
    Started,
    TextDelta,
)
from omost_engine.llm.base import GenerationStats
from omost_engine.render.base import RenderParams, RenderResult, Step
from tests.cluster.jobs import CANVAS, compose_job, render_job
from tests.fakes.fake_backends import FakeLLM, FakeRenderer


def roundtrip(event: JobEvent, max_image_bytes: int = 2**20) -> JobEvent:
    fields = encode_event(event, max_image_bytes=max_image_bytes)
    return decode_event({k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()})


def test_jobs_cross_the_wire_unchanged() -> None:
    for job in (compose_job("alice", "c1", tag="turn-1", timeout_s=30.0), render_job("bob", "r1")):
        assert decode_job(encode_job(job)) == job
    assert decode_job(encode_job(render_job("bob", "r2"))).canvas.corrections == CANVAS.corrections


def test_every_event_crosses_the_wire_unchanged() -> None:
    parts = list(IncrementalParser().feed(to_answer(CANVAS)))
    image = Image.new("RGB", (16, 8), (200, 10, 30))
    compose = ComposeResult("text", None, CanvasError("expected a region", 7), GenerationStats(new_tokens=5))
    plain: list[JobEvent] = [
        Queued(3, 12.5),
        Started(2),
        TextDelta("canvas = "),
        *(PartParsed(p) for p in parts),
        Finished(compose),
        Failed("too slow", FailureKind.TIMEOUT),
        Cancelled("the user pressed stop"),
    ]
    for event in plain:
        back = roundtrip(event)
        if isinstance(event, Finished):
            assert isinstance(back, Finished) and isinstance(back.result, ComposeResult)
            assert str(back.result.parse_error) == "line 7: expected a region"
            assert back.result.stats.new_tokens == 5
        else:
            assert back == event
    step = roundtrip(Step(2, 4, image, "hires"))
    assert isinstance(step, Step) and (step.index, step.total, step.phase) == (2, 4, "hires")
    assert step.preview is not None and step.preview.tobytes() == image.tobytes()
    result = RenderResult(
        image=image, params=RenderParams(seed=7), model="m", seconds=1.5, metadata={"seed": "7"}
    )
    back = roundtrip(Finished(result))
    assert isinstance(back, Finished) and isinstance(back.result, RenderResult)
    assert back.result.image.tobytes() == image.tobytes() and back.result.params.seed == 7


def test_a_finished_image_over_the_bound_is_refused_with_the_key_to_raise() -> None:
    big = RenderResult(
        image=Image.effect_noise((256, 256), 90).convert("RGB"), params=RenderParams(), model="m", seconds=1
    )
    with pytest.raises(ImageTooLarge, match=r"queue\.max_result_mib"):
        encode_event(Finished(big), max_image_bytes=1000)


def test_garbage_in_redis_fails_to_decode_instead_of_running_anything() -> None:
    with pytest.raises(CodecError):
        decode_job('{"kind": "render", "owner": "x"}')
    with pytest.raises(CodecError):
        decode_event({b"type": b"__import__", b"data": b"{}"})


def test_both_engines_offer_the_same_interface() -> None:
    assert isinstance(Engine(FakeLLM(), FakeRenderer()), JobEngine)
    from omost_engine.cluster import RedisEngine

    assert isinstance(RedisEngine("redis://127.0.0.1:1/0"), JobEngine)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_redis_backend_reads_its_url_from_the_named_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(write(tmp_path, '[queue]\nbackend = "redis"\nredis_url_env = "OMOST_TEST_REDIS"\n'))
    monkeypatch.setenv("OMOST_TEST_REDIS", "redis://:s3cret@gpu-box:6379/2")
    assert cluster_url(config) == "redis://:s3cret@gpu-box:6379/2"
    engine = cluster_engine(config)
    assert engine.max_total == config.queue.max_total
    monkeypatch.delenv("OMOST_TEST_REDIS")
    with pytest.raises(ConfigError, match="OMOST_TEST_REDIS is not set"):
        cluster_url(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('backend = "redis"\n', 'queue.backend: is "redis", which needs queue.redis_url_env'),
        ('redis_url = "redis://:hunter2@host:6379/0"\n', "carries a password"),
        ('redis_url = "http://host"\n', "redis://"),
        ("lease_s = 2.0\nheartbeat_s = 2.0\n", "queue.lease_s: must be at least twice queue.heartbeat_s"),
    ],
)
def test_cluster_settings_that_cannot_work_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, "[queue]\n" + text))
    assert message in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_a_worker_loads_only_what_it_serves() -> None:
    llm, renderer = FakeLLM(), FakeRenderer()
    load_models(llm, renderer, ["render"], swap=False)
    assert (llm.loads, renderer.loads) == (0, 1)
    load_models(llm, renderer, ["compose", "render"], swap=True)  # swapping: the engine loads the LLM later
    assert (llm.loads, renderer.loads) == (0, 2)
    load_models(llm, renderer, ["compose"], swap=False)
    assert llm.loads == 1


def test_an_edit_render_and_a_repair_cross_the_wire_unchanged() -> None:
    import dataclasses
    import io

    from omost_engine.jobs import Repairing
    from omost_engine.render.edit_plan import EditSpec

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "navy").save(buffer, format="PNG")
    spec = EditSpec("inpaint", buffer.getvalue(), ((0, 40, 0, 40), (10, 90, 45, 90)), margin=8)
    job = render_job("alice", "e1")
    job = dataclasses.replace(job, params=dataclasses.replace(job.params, edit=spec, frame_zoom=1.5))
    assert decode_job(encode_job(job)) == job
    event = Repairing("line 3: unknown location 'on the lefft'")
    assert roundtrip(event) == event
