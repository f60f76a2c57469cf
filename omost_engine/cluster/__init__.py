"""Scale-out: compose and render jobs run by `omost-bot worker` processes through Redis.

    codec.py     jobs and events <-> JSON and PNG bytes (nothing is unpickled or executed)
    scripts.py   the key layout and the Lua scripts: fair claim, leases, fenced events, cancel
    state.py     typed async calls on that state, shared by both sides
    client.py    RedisEngine: the bot's engine_api.JobEngine on the cluster
    worker.py    Worker: claims jobs, runs them on a private in-process Engine, streams events

Needs the `redis` package (the [cluster] extra) and a Redis 7 server; nothing here is imported
unless `[queue] backend = "redis"` or a worker runs. Must not import the bot or the adapters.
"""

from omost_engine.cluster.client import RedisEngine, RedisJobHandle
from omost_engine.cluster.worker import Worker, WorkerSettings

__all__ = ["RedisEngine", "RedisJobHandle", "Worker", "WorkerSettings"]
