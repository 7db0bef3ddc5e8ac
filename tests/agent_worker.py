"""examples/phone_agent.py's entrypoint in a worker tuned for tests (same CLI: `start`, `dev`).

    ip netns exec NS env LIVEKIT_URL=http://HOST_IP:PORT LIVEKIT_API_KEY=... \
        LIVEKIT_API_SECRET=... EXAMPLE_EVENTS_FILE=events.jsonl \
        .venv/bin/python tests/agent_worker.py start

What differs from the example's defaults (`start` = livekit-agents' production mode) and why:
- port=0: the health-check HTTP server binds an ephemeral port, not 0.0.0.0:8081;
- num_idle_processes=1: one pre-forked job process instead of min(CPUs, 4) (faster, less memory);
- load_fnc=0 and load_threshold=inf: the default load is the machine's CPU use, and above 0.7
  the worker reports WS_FULL and answers availability with available=False - a busy test
  machine would make the worker refuse jobs;
- drain_timeout=5 s: SIGTERM waits for running jobs (1 h by default) before exiting.
The environment may set AGENT_NAME (explicit dispatch) and AGENT_WORKER_PORT (health port).
Its JSON log goes to stdout; "registered worker" carries the worker id once `/agent` answered.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")  # no VAD/EOT models in RAM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from livekit.agents import WorkerOptions, cli
from phone_agent import entrypoint


def no_load() -> float:
    return 0.0


def options() -> WorkerOptions:
    return WorkerOptions(
        entrypoint_fnc=entrypoint,
        agent_name=os.environ.get("AGENT_NAME", ""),
        port=int(os.environ.get("AGENT_WORKER_PORT", "0")),
        num_idle_processes=1,
        load_fnc=no_load,
        load_threshold=math.inf,
        drain_timeout=5,
        initialize_process_timeout=20.0,
    )


if __name__ == "__main__":
    cli.run_app(options())
