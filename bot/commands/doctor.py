"""`omost-bot doctor`: what this machine and config give the bot: GPU and VRAM, whether the
weights are on disk, which tokens are set, the render cluster when `[queue] backend = "redis"`
(Redis reachable, workers alive with device, models and rate, jobs queued), and the config in
force (secrets never printed)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

HELP = "check GPU, weights, tokens and the config in force"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="config file (default ./config.toml if present)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _gpu() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"available": False, "note": "torch is not installed"}
    if not torch.cuda.is_available():
        return {
            "available": False,
            "torch": torch.__version__,
            "note": "no CUDA GPU: models run on the CPU (slowly)",
        }
    props = torch.cuda.get_device_properties(0)
    return {
        "available": True,
        "torch": torch.__version__,
        "name": props.name,
        "vram_gib": round(props.total_memory / 2**30, 1),
    }


def _weights(model: str) -> dict[str, Any]:
    from bot.firststart import is_hub_id

    path = Path(model).expanduser()
    if path.exists():
        return {"model": model, "present": True, "where": str(path)}
    if not is_hub_id(model):  # nothing to download for a path
        return {"model": model, "present": False, "where": "missing: no such file or folder"}
    try:
        from huggingface_hub import scan_cache_dir

        repos = {r.repo_id for r in scan_cache_dir().repos}
    except Exception:  # no cache yet
        repos = set()
    present = model in repos
    return {
        "model": model,
        "present": present,
        "where": "Hugging Face cache"
        if present
        else "missing: run `omost-bot download` or point the config at a folder",
    }


def _constraint(llm: Any) -> dict[str, Any]:
    """Whether answers will be decoded under the Canvas grammar (issue 11), and how."""
    if llm.constrain == "off":
        how = 'constrain = "off": an answer that does not parse gets one repair turn'
        return {"constrained": False, "how": how}
    if llm.backend != "openai":
        return {"constrained": True, "how": "local model: llguidance masks every token"}
    from omost_engine.llm.openai_api import ENFORCING_SERVERS, grammar_fields, probe_server

    if llm.server == "auto":
        server, evidence = probe_server(str(llm.base_url))
        server = server or "unreachable"
    else:
        server, evidence = llm.server, "from the config"
    if server in ENFORCING_SERVERS:
        field = next(iter(grammar_fields(server)))
        return {"constrained": True, "server": server, "how": f"{server} ({evidence}): grammar in `{field}`"}
    return {
        "constrained": False,
        "server": server,
        "how": f"{server} ({evidence}) cannot enforce a grammar: one repair turn per bad answer",
    }
def _family(render: Any) -> dict[str, Any]:
    """The renderer family in force: the configured one, or what "auto" finds in model_index.json."""
    from omost_engine.render.factory import UnknownModelFamily, detect_family

    if render.family != "auto":
        return {"family": render.family}
    try:
        return {"family": detect_family(render.model)}
    except UnknownModelFamily as e:
        return {"family": None, "family_error": str(e)}


async def _cluster_state(config: Any) -> dict[str, Any]:
    from redis.exceptions import RedisError

    from bot.worker import cluster_url
    from omost_engine.cluster.state import ClusterState

    state = ClusterState(cluster_url(config), prefix=config.queue.prefix, connect_timeout_s=2.0)
    try:
        counts = await state.counts()
        workers = await state.workers()
    except RedisError as e:
        return {"reachable": False, "error": str(e)}
    finally:
        await state.close()
    return {
        "reachable": True,
        "queued": counts["queued_compose"] + counts["queued_render"],
        "running": counts["running"],
        "workers": [
            {
                "id": w.worker_id,
                "status": w.status,
                "device": w.device,
                "jobs": list(w.kinds),
                "models": w.models,
                "jobs_done": w.jobs_done,
                "seconds_per_job": w.seconds_per_job,
            }
            for w in workers
        ],
    }


def _cluster(config: Any) -> dict[str, Any] | None:
    """The render cluster as Redis sees it; None with the embedded (local) engine."""
    if config.queue.backend != "redis":
        return None
    from bot.config import ConfigError

    try:
        return asyncio.run(_cluster_state(config))
    except ConfigError as e:
        return {"reachable": False, "error": str(e)}


def _print_cluster(cluster: dict[str, Any] | None) -> None:
    if cluster is None:
        return
    if not cluster["reachable"]:
        print(f"cluster:  UNREACHABLE ({cluster['error']})")
        return
    workers = cluster["workers"]
    queued, running = cluster["queued"], cluster["running"]
    print(f"cluster:  Redis ok, {len(workers)} worker(s), {queued} queued, {running} running")
    for w in workers:
        rate = "no job yet" if w["seconds_per_job"] is None else f"{w['seconds_per_job']:.1f} s/job"
        jobs = ",".join(w["jobs"])
        print(f"  worker {w['id']}: {w['status']} on {w['device'] or '?'} ({jobs}; {rate}) {w['models']}")
    if not workers:
        print("  no worker is alive: start `omost-bot worker` on a GPU machine")


def report(config: Any) -> dict[str, Any]:
    tokens = {}
    for key in ("telegram.token_env", "discord.token_env", "llm.api_key_env", "queue.redis_url_env"):
        name = config.secret_env(key)
        if name:
            tokens[key] = {"variable": name, "set": bool(os.environ.get(name))}
    llm_weights = (
        {"model": config.llm.model, "present": None, "where": f"remote server {config.llm.base_url}"}
        if config.llm.backend == "openai"
        else _weights(config.llm.model)
    )
    return {
        "config": config.source,
        "gpu": _gpu(),
        "weights": {
            "llm": llm_weights,
            "render": {**_weights(config.render.model), **_family(config.render)},
        },
        "grammar": _constraint(config.llm),
        "tokens": tokens,
        "platforms": {"telegram": config.telegram.enabled, "discord": config.discord.enabled},
        "cluster": _cluster(config),
        "settings": json.loads(config.model_dump_json()),
    }


def run(args: argparse.Namespace) -> int:
    from bot.commands.chat import load

    config = load(args)
    data = report(config)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    gpu = data["gpu"]
    print(f"config:   {data['config']}")
    if gpu["available"]:
        print(f"gpu:      {gpu['name']}, {gpu['vram_gib']} GiB VRAM (torch {gpu['torch']})")
    else:
        print(f"gpu:      none ({gpu['note']})")
    for name, w in data["weights"].items():
        state = "ok" if w["present"] else ("remote" if w["present"] is None else "MISSING")
        family = f" ({w['family']})" if w.get("family") else ""
        print(f"{name + ':':9} {w['model']}{family} [{state}] {w['where']}")
        if w.get("family_error"):
            print(f"          {w['family_error']}")
    grammar = data["grammar"]
    print(f"grammar:  {'constrained' if grammar['constrained'] else 'NOT constrained'}: {grammar['how']}")
    for key, t in data["tokens"].items():
        print(f"token:    {key} -> ${t['variable']} {'set' if t['set'] else 'NOT SET'}")
    enabled = [p for p, on in data["platforms"].items() if on] or ["terminal chat only"]
    print(f"platforms: {', '.join(enabled)}")
    _print_cluster(data["cluster"])
    return 0
