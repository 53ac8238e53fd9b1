"""What each process's death does to clients, measured: the adapter service, an engine core, an API server, a replica.

    python benchmarks/process_deaths.py [--only adapter_service,engine_core,api_server,replica] [--out DIR]

For each case a fresh deployment on the embedded default takes a steady load (a
base-model request every 0.2 s and a request with a `task_description` every 0.3 s,
`t2l_vllm.testing.load`), one process gets SIGKILL (as the OOM killer sends it), and
the load runs on for `--observe-s`. Reported per case: the answers before and after
the kill by status, how long description requests went without an answer, whether
the server was still alive, its exit status and last log line if it ended, and the
adapter folders left after it was stopped. Writes DIR/process_deaths.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from t2l_vllm.testing.load import Load
from t2l_vllm.testing.processes import adapter_service_pids, children_named
from t2l_vllm.testing.servers import Server, replica_set, t2l_serve, vllm_router

CASES = ("adapter_service", "engine_core", "api_server", "replica")
OPTIONS = ["--dtype", "float32", "--gpu-memory-utilization", "0.3", "--max-model-len", "512", "--max-loras", "2",
           "--max-cpu-loras", "4", "--served-model-name", "tiny"]
DESCRIPTIONS = ["Reverse the letters of every word.", "Uppercase every letter."]
NEW = "Sort the words alphabetically."  # asked only after the kill: it needs an adapter service


def summary(load: Load, killed: float) -> dict[str, Any]:
    """Answers before and after the kill, by kind and status; the longest gap without a description answered."""
    def counts(outcomes) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(o.status for o in outcomes).items())}

    after = [o for o in load.described() if o.sent > killed and o.status == 200]
    return {
        "base_before": counts(o for o in load.base() if o.sent <= killed),
        "base_after": counts(o for o in load.base() if o.sent > killed),
        "described_before": counts(o for o in load.described() if o.sent <= killed),
        "described_after": counts(o for o in load.described() if o.sent > killed),
        "new_description_answered_after_s": round(min((o.sent for o in after if o.description == NEW), default=float("nan")) - killed, 1),
    }


def ended(server: Server) -> dict[str, Any]:
    code = server.process.poll()
    lines = [line for line in server.log_tail(4000).splitlines() if line.strip()]
    return {"alive": code is None and server.healthy(), "exit_status": code, "last_line": lines[-1][-300:] if lines else ""}


def under_load(server: Server, kill, observe_s: float, warm_s: float = 10) -> dict[str, Any]:
    """Runs the load, kills what `kill()` names after a warm-up, observes, and summarises."""
    with Load(server.url, list(DESCRIPTIONS)) as load:
        time.sleep(warm_s)
        victim = kill()
        killed = time.monotonic()
        load.descriptions.append(NEW)
        time.sleep(observe_s)
    return {"killed": victim, **summary(load, killed), **ended(server)}


def folders_left(adapter_dir: Path) -> int:
    return sum(1 for _ in adapter_dir.glob("t2l_vllm-adapters-*")) if adapter_dir.exists() else 0


def sigkill(pids: list[int], what: str) -> str:
    if not pids:
        raise SystemExit(f"no {what} process to kill")
    os.kill(pids[0], signal.SIGKILL)
    return f"{what} (pid {pids[0]})"


def run_case(case: str, work: Path, observe_s: float) -> dict[str, Any]:
    adapter_dir = work / "adapters"
    options = [*OPTIONS, "--adapter-dir", str(adapter_dir)]
    if case == "replica":
        return run_replica_case(work, options, observe_s)
    extra = ["--api-server-count", "2"] if case == "api_server" else []
    with t2l_serve(work, [*options, *extra], die_with_parent=True) as server:
        pid = server.process.pid
        kill = {
            "adapter_service": lambda: sigkill(adapter_service_pids(pid), "adapter service"),
            "engine_core": lambda: sigkill(children_named(pid, "EngineCore"), "engine core"),
            "api_server": lambda: sigkill(children_named(pid, "APIServer_1"), "API server 1 of 2"),
        }[case]
        result = under_load(server, kill, observe_s)
    return {**result, "adapter_folders_left_after_stop": folders_left(adapter_dir)}


def run_replica_case(work: Path, options: list[str], observe_s: float) -> dict[str, Any]:
    """Two replicas behind vllm-router (consistent_hash); one replica's whole process group is killed."""
    with replica_set(2, lambda i: t2l_serve(work / f"replica{i}", options, die_with_parent=True)) as replicas:
        with vllm_router([r.url for r in replicas], work / "router.log", die_with_parent=True) as router:
            def kill() -> str:
                os.killpg(replicas[1].process.pid, signal.SIGKILL)
                return f"replica 2 of 2 (process group {replicas[1].process.pid})"

            result = under_load(router, kill, observe_s)
    return {**result, "adapter_folders_left_after_stop": folders_left(work / "replica0" / "adapters") + folders_left(work / "replica1" / "adapters")}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/process_deaths.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases (default: all)")
    parser.add_argument("--observe-s", type=float, default=40.0, help="how long the load runs on after the kill")
    parser.add_argument("--out", default="benchmarks/results", help="folder for process_deaths.json")
    args = parser.parse_args()
    out = Path(args.out)
    results = {}
    for case in args.only.split(","):
        work = out / "process_deaths" / case
        results[case] = run_case(case, work, args.observe_s)
        print(case, json.dumps(results[case]), flush=True)
    (out / "process_deaths.json").write_text(json.dumps({"observe_s": args.observe_s, "cases": results}, indent=2) + "\n")
    print(f"\n{'case':<16} {'base after kill':<22} {'described after kill':<26} {'new answered (s)':<17} alive  folders left")
    for case, r in results.items():
        print(f"{case:<16} {json.dumps(r['base_after']):<22} {json.dumps(r['described_after']):<26} "
              f"{r['new_description_answered_after_s']:<17} {str(r['alive']):<6} {r['adapter_folders_left_after_stop']}")


if __name__ == "__main__":
    main()
