"""`python -m t2l_vllm.service SOCKET OWNER_PID`: the adapter service process (see `server.py`).

OWNER_PID is the process that owns the deployment (its API servers' parent, or the
offline engine's process): the adapter folders are the deployment's and live as
long as it does, whatever happens to a service.

Started by a client (`service/client.py`), which writes the settings as JSON to
its standard input and reads one line back from its standard output:
`{"ready": true}` once the socket accepts clients, or `{"error": "..."}` if the
settings cannot work (a bad checkpoint, a router library that does not load).

The process detaches from the one that started it first thing (a second fork):
vLLM stops an API server by killing its whole process tree, and the service must
outlive any one API server, serving the others until the last has gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile


def main(argv: list[str]) -> int:
    if os.fork() > 0:  # the starter reaps this parent at once; the child lives on, re-parented
        os._exit(0)
    # prometheus_client picks its multiprocess mode when imported: settle the folder first.
    # Under several API servers vLLM has made one already, and ours join it.
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    private_metrics = metrics_dir is None
    if private_metrics:
        metrics_dir = tempfile.mkdtemp(prefix="t2l_vllm-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    logging.basicConfig(
        level=os.environ.get("T2L_VLLM_SERVICE_LOG_LEVEL", "WARNING"), format="%(levelname)s t2l_vllm adapter service: %(message)s"
    )
    from ..errors import T2LError
    from .server import AdapterService
    from .settings import ServiceSettings

    def report(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    try:
        service = AdapterService(ServiceSettings.from_json(sys.stdin.read()), metrics_dir, private_metrics, argv[0], int(argv[1]))
    except (T2LError, OSError, ValueError) as err:
        report({"error": str(err)})
        if private_metrics:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 2

    def ready() -> None:
        report({"ready": True})
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nobody reads the pipe from here on

    try:
        asyncio.run(service.run(ready))
    except T2LError as err:  # before `ready` (a refused preload): the starter reads this line
        report({"error": str(err)})
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
