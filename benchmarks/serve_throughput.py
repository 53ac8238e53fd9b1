"""Serving throughput of generated adapters against vLLM's own multi-LoRA, on one server.

The question: what does a per-request `task_description` cost over serving the same
adapters the ordinary vLLM way? One `t2l-vllm serve` process (one engine, one
configuration, `--max-loras K`) answers five arms with the same prompts, the same
`max_tokens`, greedy decoding with `ignore_eos`, and the same client concurrency:

    a  base model, no adapter (no `task_description`)
    b  vLLM's own LoRA: K PEFT folders registered with `--lora-modules`, written
       beforehand by `AdapterGenerator` from K descriptions; requests name them
       round-robin with `model=native-j`
    c  t2l_vllm: the same K descriptions as `task_description`, round-robin, cache
       warm (each description sent before the timed run)
    d  t2l_vllm: a new description on every request (a hypernetwork pass each;
       the adapter cache is sized so nothing is evicted during the run)
    e  vLLM's own cold adapter: every request names a `--lora-modules` folder that
       vLLM has not loaded yet, written beforehand by the same generator from new
       descriptions. It pays what d pays in vLLM (queueing for a LoRA slot, loading
       a folder it has not seen) without generation, so d - e is what t2l_vllm adds.

b and c run identical adapter weights (the same descriptions through the same
hypernetwork), and a check before timing confirms they give the same tokens, so c/b
isolates what the description path adds. Prefix caching is off, so no arm reuses
another's prefill. The machine is noisy, so the arms run in many short rounds: b and
c side by side in every round (their order flipped each round), the blocks rotated,
each timed run preceded by an untimed one of `concurrency` requests (every adapter of
b and c, every batch size once). A ratio is taken within each round and reported as
the median over rounds with its spread. The client is pinned to one CPU (`--client-cpu`,
default the last: vLLM's CPU worker binds its threads to the others) once the server
is up, so that its own work does not move onto the worker's core.

Per arm: output tokens/s (completion tokens from the usage chunk / wall time of the
arm) and TTFT p50/p99 (time to the first streamed chunk carrying a choice, i.e. the
first generated token, whose text may be empty for a partial UTF-8 byte), and, from
vLLM's own /metrics over each timed run, the mean TTFT, queue and prefill times
counted from the request's arrival at the engine, which t2l_vllm's adapter lookup
and generation precede: the difference to the client's TTFT is what the HTTP front
end, the plugin and generation add. The hypernetwork's latency alone is measured in
the same run, twice: in this process (`AdapterGenerator.generate([d])` plus the PEFT
folder write, single descriptions) and on the idle server (sequential fresh-description
requests, the delta of its `t2l_generation_seconds` histogram). The server's is the
reference: it is the very pass arm d waits for. Targets: TTFT p50(d) - TTFT p50(e)
<= 1.2 x the server's pass alone, and c/b >= 0.95.

`--hypernet-threads N` serves with the adapter service's torch threads at N
(`GeneratorSettings.threads`, through a `$T2L_VLLM_CONFIG` settings file); without it,
the setting's default.

    python benchmarks/serve_throughput.py [--k 4 --requests 32 --rounds 8 --concurrency 8
        --max-tokens 32 --hypernet-threads N --model BASE --hypernet DIR --out results.json]
        [-- extra serve options]

Unknown options go to `t2l-vllm serve` after this script's own (so they win).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from t2l_vllm.generator import AdapterGenerator, GeneratorSettings
from t2l_vllm.paths import CONFIG_ENV
from t2l_vllm.service.server import threads_beside_the_engine
from t2l_vllm.testing.servers import (
    free_port,
    scrape_metrics,
    t2l_serve,
    t2l_serve_command,
)
from t2l_vllm.testing.serving_bench import (
    PROMPTS,
    SERVED_NAME,
    RequestResult,
    body,
    stream_one,
)

ARMS = ("a", "b", "c", "d", "e")
ARM_LABELS = {
    "a": "base model, no adapter",
    "b": "vLLM --lora-modules, K folders",
    "c": "t2l, K descriptions, cache warm",
    "d": "t2l, new description per request",
    "e": "vLLM, new folder per request",
}
# One round's blocks, rotated round by round; b and c stay side by side (flipped every other round),
# so that their ratio compares two runs a few seconds apart.
BLOCKS = (("a",), ("b", "c"), ("d",), ("e",))
TARGET_TTFT_FACTOR = 1.2
TARGET_C_OVER_B = 0.95
ALONE_SAMPLES = 10  # in this process, before the rounds
ALONE_PER_ROUND = 3  # on the idle server, after every round: the bound follows the machine's load through the run
# vLLM's histograms, timed from when a request reaches the engine (after t2l_vllm made its adapter):
# client TTFT minus engine TTFT is what the HTTP front end, the plugin and generation add.
ENGINE_HISTOGRAMS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "queue": "vllm:request_queue_time_seconds",
    "prefill": "vllm:request_prefill_time_seconds",
}
TASKS = (
    "Answer multiple-choice science questions with the letter of the right option.",
    "Solve grade-school math word problems step by step.",
    "Translate English sentences into formal French.",
    "Label the sentiment of product reviews as positive or negative.",
    "Summarise news paragraphs in one sentence.",
    "Complete Python functions from their docstrings.",
    "Rewrite informal sentences in a polite business register.",
    "Extract the named people and places from a paragraph.",
)


@dataclass(frozen=True)
class ArmRun:
    """One timed run of one arm in one round."""

    arm: str
    round: int
    wall_s: float
    results: list[RequestResult]
    load_average: float  # 1-minute, at the end of the run: other jobs on the machine show here
    engine_ms: dict[str, float]  # vLLM's own per-request means over this run, see ENGINE_HISTOGRAMS
    passes: dict[str, float]  # the adapter service's passes over this run: count, seconds, descriptions

    @property
    def tokens(self) -> int:
        return sum(r.completion_tokens for r in self.results)


@dataclass
class Workload:
    """What every request of every arm shares, and what distinguishes the arms."""

    requests: int
    concurrency: int
    max_tokens: int
    native_names: list[str]  # arm b, round-robin
    descriptions: list[str]  # arm c, round-robin; the same tasks as native_names
    cold_names: list[str]  # arm e, each used once, in order

    def __post_init__(self) -> None:
        self._cold = iter(self.cold_names)

    def next_cold(self) -> str:
        try:
            return next(self._cold)
        except StopIteration:
            raise RuntimeError("arm e ran out of unloaded adapter folders; see cold_adapter_count") from None


# --- command line ------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="base model (default: the embedded toy base model; needs --hypernet)")
    parser.add_argument("--hypernet", help="hypernetwork folder (default: the embedded one)")
    parser.add_argument("--k", type=int, default=4, help="adapters in arms b and c, and --max-loras (default: %(default)s)")
    parser.add_argument("--max-cpu-loras", type=int, help="vLLM's --max-cpu-loras (default: 2K, so b's and c's adapters all stay loaded)")
    parser.add_argument("--requests", type=int, default=32, help="timed requests per arm per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds over all arms, order rotated each round (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per arm (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=32, help="output tokens per request, ignore_eos (default: %(default)s)")
    parser.add_argument("--hypernet-threads", type=int,
                        help="the adapter service's torch threads (GeneratorSettings.threads; default: its default, "
                             f"{GeneratorSettings().threads}: automatic, one beside this CPU engine)")
    parser.add_argument("--client-cpu", type=int, help="the CPU this client is pinned to once the server is up "
                        "(default: the last one it may use; -1: not pinned)")
    parser.add_argument("--port", type=int, help="server port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve_throughput.json")
    args, server_extra = parser.parse_known_args(argv)
    if min(args.k, args.requests, args.rounds, args.concurrency, args.max_tokens) < 1:
        parser.error("--k, --requests, --rounds, --concurrency and --max-tokens must be positive")
    if args.model and not args.hypernet:
        parser.error("--model needs --hypernet: the embedded hypernetwork only fits the embedded base model")
    args.max_cpu_loras = args.max_cpu_loras or 2 * args.k
    if args.client_cpu is None:
        args.client_cpu = max(os.sched_getaffinity(0))
    if args.max_cpu_loras < args.k:
        parser.error("--max-cpu-loras must be at least --k")
    return args, [a for a in server_extra if a != "--"]


# --- adapters and the generator -------------------------------------------------------
def task_descriptions(k: int) -> list[str]:
    return [f"Task {j}: {TASKS[j % len(TASKS)]}" for j in range(k)]


def fresh_description(tag: str) -> str:
    """A description no earlier request used, as long as those of `TASKS`."""
    return f"Fresh task {tag}: answer questions about topic {tag} in one short sentence."


def write_native_adapters(generator: AdapterGenerator, descriptions: list[str], folder: Path) -> dict[str, Path]:
    """The K PEFT folders arm b registers with `--lora-modules`, from one batched pass."""
    adapters = generator.generate(descriptions)
    return {f"native-{j}": adapter.save_peft(folder / f"native-{j}") for j, adapter in enumerate(adapters)}


def write_cold_adapters(generator: AdapterGenerator, count: int, folder: Path, batch: int = 32) -> dict[str, Path]:
    """Arm e's folders: one per request, each from a description no other arm sends, written before the server starts."""
    folders = {}
    for start in range(0, count, batch):
        tags = range(start, min(count, start + batch))
        for j, adapter in zip(tags, generator.generate([fresh_description(f"cold-{j}") for j in tags])):
            folders[f"cold-{j}"] = adapter.save_peft(folder / f"cold-{j}")
    return folders


def cold_adapter_count(args: argparse.Namespace, w: Workload) -> int:
    """Every request of arm e, warm-up ones included, names a folder vLLM has not loaded."""
    return args.rounds * (args.requests + warmup_count(w))


def time_generation_in_process(generator: AdapterGenerator, folder: Path, samples: int) -> list[float]:
    """Seconds for one description: encoder, hypernetwork, checks and the PEFT folder write."""
    times = []
    for i in range(samples + 1):  # the first is a warm-up
        start = time.perf_counter()
        generator.generate([fresh_description(f"in-process-{i}")])[0].save_peft(folder / f"alone-{i}")
        times.append(time.perf_counter() - start)
    return times[1:]


# --- the server process --------------------------------------------------------------
def server_options(args: argparse.Namespace, native: dict[str, Path], cache_entries: int, cpu: bool, extra: list[str]) -> list[str]:
    # `native` holds arm b's folders and arm e's (vLLM registers both by name and loads each on first use)
    """`t2l-vllm serve`'s options after `--host/--port`; `extra` (this script's unknown options) last, so they win."""
    options = ["--served-model-name", SERVED_NAME, "--max-model-len", "512", "--no-enable-prefix-caching",
               "--disable-uvicorn-access-log",
               "--max-loras", str(args.k), "--max-cpu-loras", str(args.max_cpu_loras),
               "--adapter-cache-entries", str(cache_entries),
               "--lora-modules", *(f"{name}={path}" for name, path in native.items())]
    if args.model:
        options += ["--model", args.model]
    if args.hypernet:
        options += ["--hypernet", args.hypernet]
    if cpu:
        options += ["--dtype", "float32", "--gpu-memory-utilization", "0.3"]
    return options + extra


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def histogram_mean_ms(after: dict[str, float], before: dict[str, float], name: str) -> float:
    count = delta(after, before, f"{name}_count")
    return 1e3 * delta(after, before, f"{name}_sum") / count if count else float("nan")


# --- requests ------------------------------------------------------------------------
def arm_bodies(arm: str, tag: str, count: int, w: Workload, max_tokens: int) -> list[dict[str, Any]]:
    """`count` requests of one arm; request i gets prompt i and adapter i (round-robin)."""
    def one(i: int) -> dict[str, Any]:
        prompt = PROMPTS[i % len(PROMPTS)]
        if arm == "b":
            return body(prompt, max_tokens, model=w.native_names[i % len(w.native_names)])
        if arm == "c":
            return body(prompt, max_tokens, description=w.descriptions[i % len(w.descriptions)])
        if arm == "d":
            return body(prompt, max_tokens, description=fresh_description(f"{tag}-{i}"))
        if arm == "e":
            return body(prompt, max_tokens, model=w.next_cold())
        return body(prompt, max_tokens)
    return [one(i) for i in range(count)]


def warmup_count(w: Workload) -> int:
    """Untimed requests before each timed arm: every adapter of b and c once, and every
    batch size up to the concurrency (the engine's first steps at a new shape are slow)."""
    return max(len(w.native_names), w.concurrency)


async def closed_loop(client: httpx.AsyncClient, payloads: list[dict[str, Any]], concurrency: int) -> tuple[float, list[RequestResult]]:
    """Sends all payloads with `concurrency` in flight; returns the wall time and the results in order."""
    results: list[RequestResult | None] = [None] * len(payloads)
    indices = iter(range(len(payloads)))

    async def worker() -> None:
        for i in indices:
            results[i] = await stream_one(client, payloads[i])

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(payloads)))))
    return time.perf_counter() - start, results  # type: ignore[return-value]


def round_order(r: int) -> list[str]:
    """Round r's arms: the blocks rotated by r, b and c flipped on odd rounds."""
    blocks = BLOCKS[r % len(BLOCKS):] + BLOCKS[:r % len(BLOCKS)]
    return [arm for block in blocks for arm in (block[::-1] if r % 2 else block)]


def pass_counts(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {"count": delta(after, before, "t2l_generation_seconds_count"),
            "seconds": delta(after, before, "t2l_generation_seconds_sum"),
            "descriptions": delta(after, before, "t2l_hypernet_batch_size_sum")}


async def run_rounds(client: httpx.AsyncClient, url: str, w: Workload, rounds: int) -> tuple[list[ArmRun], dict[str, float]]:
    runs = []
    alone = {"passes": 0.0, "seconds": 0.0}
    for r in range(rounds):
        for arm in round_order(r):
            await closed_loop(client, arm_bodies(arm, f"warm-{r}", warmup_count(w), w, w.max_tokens), w.concurrency)
            before = scrape_metrics(url)
            wall, results = await closed_loop(client, arm_bodies(arm, f"r{r}", w.requests, w, w.max_tokens), w.concurrency)
            after = scrape_metrics(url)
            engine = {key: histogram_mean_ms(after, before, name) for key, name in ENGINE_HISTOGRAMS.items()}
            runs.append(ArmRun(arm, r, wall, results, os.getloadavg()[0], engine, pass_counts(after, before)))
            print(f"  round {r} arm {arm}: {runs[-1].tokens / wall:8.1f} tok/s, TTFT p50 "
                  f"{1e3 * statistics.median(x.ttft_s for x in results):7.1f} ms, wall {wall:5.1f} s, "
                  f"load average {runs[-1].load_average:.2f}", flush=True)
        sample = await server_generation_alone(client, url, ALONE_PER_ROUND, tag=f"r{r}")
        alone["passes"] += sample["passes"]
        alone["seconds"] += sample["passes"] * sample["mean_s"]
    alone["mean_s"] = alone["seconds"] / alone["passes"]
    return runs, alone


async def complete_text(client: httpx.AsyncClient, payload: dict[str, Any]) -> str:
    response = await client.post("/v1/completions", json=payload)
    response.raise_for_status()
    return response.json()["choices"][0]["text"]


async def same_tokens_check(client: httpx.AsyncClient, w: Workload) -> dict[str, Any]:
    """b and c run the same weights: their greedy texts must match, and differ from the base model's."""
    prompt, n = PROMPTS[0], 12
    base = await complete_text(client, body(prompt, n, stream=False))
    native = [await complete_text(client, body(prompt, n, model=m, stream=False)) for m in w.native_names]
    t2l = [await complete_text(client, body(prompt, n, description=d, stream=False)) for d in w.descriptions]
    return {"b_equals_c": native == t2l, "adapters_change_output": any(t != base for t in t2l)}


async def server_generation_alone(client: httpx.AsyncClient, url: str, samples: int, tag: str) -> dict[str, float]:
    """Sequential fresh-description requests on the idle server: its pass time for one description."""
    before = scrape_metrics(url)
    for i in range(samples):
        await complete_text(client, body(PROMPTS[0], 1, description=fresh_description(f"server-alone-{tag}-{i}"), stream=False))
    after = scrape_metrics(url)
    passes = delta(after, before, "t2l_generation_seconds_count")
    return {"passes": passes, "mean_s": delta(after, before, "t2l_generation_seconds_sum") / passes}


async def measure(url: str, w: Workload, rounds: int) -> dict[str, Any]:
    """Runs in this process's main thread, after any pinning of it (`pin_client`)."""
    limits = httpx.Limits(max_connections=w.concurrency + 2, max_keepalive_connections=w.concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        check = await same_tokens_check(client, w)
        runs, alone = await run_rounds(client, url, w, rounds)
    d = [r.passes for r in runs if r.arm == "d"]
    passes = sum(x["count"] for x in d)
    during_d = {
        "passes": passes,
        "generations": sum(x["descriptions"] for x in d),
        "mean_pass_s": sum(x["seconds"] for x in d) / passes if passes else float("nan"),
        "mean_batch": sum(x["descriptions"] for x in d) / passes if passes else float("nan"),
    }
    return {"check": check, "server_alone": alone, "during_arm_d": during_d, "runs": runs}


# --- summary -------------------------------------------------------------------------
def summarize(runs: list[ArmRun]) -> dict[str, dict[str, Any]]:
    out = {}
    for arm in ARMS:
        mine = [r for r in runs if r.arm == arm]
        ttfts = [x.ttft_s for r in mine for x in r.results]
        out[arm] = {
            "label": ARM_LABELS[arm],
            "requests": len(ttfts),
            "tokens": sum(r.tokens for r in mine),
            "tokens_per_s": sum(r.tokens for r in mine) / sum(r.wall_s for r in mine),
            "tokens_per_s_by_round": [r.tokens / r.wall_s for r in mine],
            "ttft_p50_ms": 1e3 * float(np.percentile(ttfts, 50)),
            "ttft_p99_ms": 1e3 * float(np.percentile(ttfts, 99)),
            "ttft_p50_ms_by_round": [1e3 * statistics.median(x.ttft_s for x in r.results) for r in mine],
            "ttft_mean_ms": 1e3 * statistics.mean(ttfts),
            **{f"engine_{key}_mean_ms": statistics.mean(r.engine_ms[key] for r in mine) for key in ENGINE_HISTOGRAMS},
        }
    return out


def spread(values: list[float]) -> dict[str, Any]:
    """The median of per-round values, with their range and interquartile range."""
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "q1": q1, "q3": q3,
            "by_round": values}


def d_minus_e_breakdown(arms: dict[str, dict[str, Any]], gen: dict[str, Any]) -> dict[str, float]:
    """Where arm d's extra TTFT over arm e goes, by means: before the engine (the lease: waiting for a
    pass to start and for it to end, the service's round trip) and in the engine (slot queue, load, prefill)."""
    d, e = arms["d"], arms["e"]
    before = (d["ttft_mean_ms"] - d["engine_ttft_mean_ms"]) - (e["ttft_mean_ms"] - e["engine_ttft_mean_ms"])
    pass_ms = 1e3 * gen["during_arm_d"]["mean_pass_s"]
    return {"client_mean_ms": d["ttft_mean_ms"] - e["ttft_mean_ms"], "before_engine_ms": before,
            "engine_ms": d["engine_ttft_mean_ms"] - e["engine_ttft_mean_ms"],
            "engine_queue_ms": d["engine_queue_mean_ms"] - e["engine_queue_mean_ms"],
            "pass_during_d_ms": pass_ms, "pass_alone_ms": 1e3 * gen["server_alone"]["mean_s"],
            "before_engine_over_pass_during_d": before / pass_ms if pass_ms else float("nan")}


def targets(arms: dict[str, dict[str, Any]], server_alone_s: float) -> dict[str, Any]:
    by_round = lambda x: [p / q for p, q in zip(arms[x]["tokens_per_s_by_round"], arms["b"]["tokens_per_s_by_round"])]
    pooled = lambda x: arms[x]["tokens_per_s"] / arms["b"]["tokens_per_s"]
    ratios = {f"{x}_over_b": spread(by_round(x)) for x in ("a", "c", "d", "e")}
    ttft_d_minus_e = arms["d"]["ttft_p50_ms"] - arms["e"]["ttft_p50_ms"]
    ttft_d_minus_e_by_round = [d - e for d, e in zip(arms["d"]["ttft_p50_ms_by_round"], arms["e"]["ttft_p50_ms_by_round"])]
    bound_ms = TARGET_TTFT_FACTOR * 1e3 * server_alone_s
    return {
        # per-round medians: what the targets are judged on
        "c_over_b": ratios["c_over_b"]["median"], "a_over_b": ratios["a_over_b"]["median"],
        "d_over_b": ratios["d_over_b"]["median"], "e_over_b": ratios["e_over_b"]["median"],
        "ratios_by_round": ratios,
        "pooled": {f"{x}_over_b": pooled(x) for x in ("a", "c", "d", "e")},  # tokens over all rounds / wall time
        "ttft_p50_d_minus_e_ms": ttft_d_minus_e, "ttft_p50_d_minus_e_ms_by_round": spread(ttft_d_minus_e_by_round),
        "ttft_p50_d_minus_c_ms": arms["d"]["ttft_p50_ms"] - arms["c"]["ttft_p50_ms"],
        "ttft_bound_ms": bound_ms,
        "ttft_target_met": ttft_d_minus_e <= bound_ms, "c_over_b_target_met": ratios["c_over_b"]["median"] >= TARGET_C_OVER_B,
    }


def print_report(arms: dict[str, dict[str, Any]], t: dict[str, Any], gen: dict[str, Any], check: dict[str, Any],
                 cache_entries: int) -> None:
    print(f"\n{'arm':<38} {'tok/s':>8} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'requests':>9}  tok/s by round")
    for arm, s in arms.items():
        rounds = " ".join(f"{v:.0f}" for v in s["tokens_per_s_by_round"])
        print(f"{arm} {s['label']:<36} {s['tokens_per_s']:>8.1f} {s['ttft_p50_ms']:>12.1f} {s['ttft_p99_ms']:>12.1f} "
              f"{s['requests']:>9}  {rounds}")
    print(f"\nTTFT means, ms: {'client':>8} {'engine':>8} {'before engine':>14} {'queue':>8} {'prefill':>8}"
          "   (engine: vLLM's histograms, from the request's arrival at the engine)")
    for arm, s in arms.items():
        front = s["ttft_mean_ms"] - s["engine_ttft_mean_ms"]
        print(f"  {arm}{'':<13} {s['ttft_mean_ms']:>8.1f} {s['engine_ttft_mean_ms']:>8.1f} {front:>14.1f} "
              f"{s['engine_queue_mean_ms']:>8.1f} {s['engine_prefill_mean_ms']:>8.1f}")
    print("\nper-round ratios of output tokens/s to arm b: median [interquartile range] (range)")
    for name, r in t["ratios_by_round"].items():
        print(f"  {name.replace('_over_', '/')} = {r['median']:.3f} [{r['q1']:.3f}, {r['q3']:.3f}] ({r['min']:.3f}-{r['max']:.3f});"
              f" pooled {t['pooled'][name]:.3f}")
    print(f"b and c give the same tokens: {check['b_equals_c']}; adapters change the output: {check['adapters_change_output']}")
    load = gen["during_arm_d"]
    print(f"generation alone: in process {1e3 * gen['in_process_median_s']:.1f} ms median, "
          f"{1e3 * gen['in_process_min_s']:.1f} ms best of {ALONE_SAMPLES} "
          f"(encoder + hypernetwork + checks + folder write); server pass {1e3 * gen['server_alone']['mean_s']:.1f} ms "
          f"mean of {gen['server_alone']['passes']:.0f} isolated passes, {ALONE_PER_ROUND} after each round")
    print(f"during arm d: {load['passes']:.0f} passes for {load['generations']:.0f} adapters, mean batch "
          f"{load['mean_batch']:.2f}, {1e3 * load['mean_pass_s']:.1f} ms per pass "
          f"({load['mean_pass_s'] / gen['server_alone']['mean_s']:.2f} x the pass alone); adapter cache {cache_entries} entries")
    gap = t["ttft_p50_d_minus_e_ms_by_round"]
    print(f"target TTFT p50(d) - p50(e) = {t['ttft_p50_d_minus_e_ms']:.1f} ms (by round: median {gap['median']:.1f}, "
          f"{gap['min']:.1f} to {gap['max']:.1f}) <= {TARGET_TTFT_FACTOR} x server pass alone = {t['ttft_bound_ms']:.1f} ms: "
          f"{'met' if t['ttft_target_met'] else 'MISSED'}   (p50(d) - p50(c) = {t['ttft_p50_d_minus_c_ms']:.1f} ms)")
    b = t["d_minus_e_breakdown"]
    print(f"  d - e by means: {b['client_mean_ms']:.1f} ms = {b['before_engine_ms']:.1f} before the engine (the lease: "
          f"{b['before_engine_over_pass_during_d']:.2f} x a pass during d, {b['pass_during_d_ms']:.1f} ms) + {b['engine_ms']:.1f} "
          f"in it (of which slot queue {b['engine_queue_ms']:.1f})")
    print(f"target c/b = {t['c_over_b']:.3f} >= {TARGET_C_OVER_B}: {'met' if t['c_over_b_target_met'] else 'MISSED'}")


def write_chart(arms: dict[str, dict[str, Any]], path: Path) -> bool:
    """Two bar panels (tokens/s, a tick per round; TTFT p50, a tick at p99), drawn with Pillow (a vLLM dependency)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return False
    width, height, pad = 760, 360, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    colours = {"a": (120, 120, 120), "b": (60, 110, 200), "c": (40, 160, 90), "d": (220, 120, 40), "e": (150, 80, 170)}
    panels = [("output tokens/s: all rounds bar, a tick per round", lambda s: s["tokens_per_s"], lambda s: s["tokens_per_s_by_round"]),
              ("TTFT ms: p50 bar, p99 tick", lambda s: s["ttft_p50_ms"], lambda s: [s["ttft_p99_ms"]])]
    panel_w = (width - 3 * pad) // 2
    for p, (title, value, marks) in enumerate(panels):
        x0, top, bottom = pad + p * (panel_w + pad), pad, height - pad
        scale = (bottom - top - 20) / max(max([value(s), *marks(s)]) for s in arms.values())
        draw.text((x0, 10), title, fill="black")
        draw.line([(x0, bottom), (x0 + panel_w, bottom)], fill="black")
        bar_w = panel_w // (2 * len(arms))
        for i, (arm, s) in enumerate(arms.items()):
            bx = x0 + bar_w // 2 + 2 * i * bar_w
            draw.rectangle([bx, bottom - value(s) * scale, bx + bar_w, bottom], fill=colours[arm])
            for m in marks(s):
                draw.line([(bx + 2, bottom - m * scale), (bx + bar_w - 2, bottom - m * scale)], fill="black", width=2)
            draw.text((bx, bottom - value(s) * scale - 14), f"{value(s):.0f}", fill="black")
            draw.text((bx + bar_w // 2 - 3, bottom + 6), arm, fill="black")
    draw.text((pad, height - 16), "a base  b vLLM --lora-modules  c t2l warm  d t2l new description  e vLLM new folder", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return True


# --- main ----------------------------------------------------------------------------
def raise_on_sigterm() -> None:
    """SIGTERM to this script unwinds through the `finally` that stops the server."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def pin_client(cpu: int) -> list[int] | None:
    """Pins this thread (the client's event loop and metric scrapes) to `cpu`; the server, started
    before, keeps its own affinity. Returns the CPUs it now runs on, or None when left unpinned (-1)."""
    if cpu < 0:
        return None
    os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0))


def service_settings_file(threads: int | None, work: Path) -> dict[str, str]:
    """The environment that gives the adapter service `threads` torch threads (none: the setting's default)."""
    if threads is None:
        return {}
    path = work / "t2l_vllm.yaml"
    path.write_text(f"generator: {{threads: {threads}}}\n")
    return {CONFIG_ENV: str(path)}


def run(args: argparse.Namespace, extra: list[str], work: Path) -> dict[str, Any]:
    import torch

    from t2l_vllm.default_model import default_paths

    hypernet = args.hypernet or str(default_paths().hypernet)
    generator = AdapterGenerator.from_checkpoint(hypernet)
    probe = Workload(args.requests, args.concurrency, args.max_tokens, [], [], [])
    cold = write_cold_adapters(generator, cold_adapter_count(args, probe), work / "cold")
    w = Workload(args.requests, args.concurrency, args.max_tokens, [f"native-{j}" for j in range(args.k)],
                 task_descriptions(args.k), list(cold))
    native = write_native_adapters(generator, w.descriptions, work / "native")
    # Every description the run sends, plus slack: nothing is evicted, so d measures generation, not churn.
    cache_entries = args.k + args.rounds * (ALONE_PER_ROUND + args.requests + warmup_count(w)) + 16
    port = args.port or free_port()
    options = server_options(args, {**native, **cold}, cache_entries, not torch.cuda.is_available(), extra)
    command = t2l_serve_command(port, options)
    env = service_settings_file(args.hypernet_threads, work)
    threads = threads_beside_the_engine(GeneratorSettings(threads=args.hypernet_threads or 0), torch.cuda.is_available(), os.environ).threads
    print(f"server ({len(cold)} folders for arm e; adapter service torch threads {threads}):",
          " ".join(c if len(c) < 200 else c[:80] + "..." for c in command[:60]), "...", flush=True)
    start = time.perf_counter()
    with t2l_serve(work, options, port=port, env=env, die_with_parent=True) as server:
        url = server.url
        print(f"server healthy after {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f}", flush=True)
        in_process = time_generation_in_process(generator, work / "alone", ALONE_SAMPLES)
        # This process holds torch and a generator: hundreds of thousands of objects that a full
        # garbage collection would rescan, pausing the client for up to 0.9 s (measured with gc
        # callbacks on this machine) and charging the pause to whichever arm is running.
        gc.collect()
        gc.freeze()
        pinned = pin_client(args.client_cpu)
        print(f"client pinned to CPU {pinned}" if pinned else "client not pinned", flush=True)
        measured = asyncio.run(measure(url, w, args.rounds))
    arms = summarize(measured["runs"])
    gen = {"in_process_s": in_process, "in_process_median_s": statistics.median(in_process), "in_process_min_s": min(in_process),
           "server_alone": measured["server_alone"], "during_arm_d": measured["during_arm_d"]}
    t = targets(arms, measured["server_alone"]["mean_s"])
    t["d_minus_e_breakdown"] = d_minus_e_breakdown(arms, gen)
    print_report(arms, t, gen, measured["check"], cache_entries)
    return {"arms": arms, "targets": t, "generation": gen, "check": measured["check"], "server_command": command,
            "service_torch_threads": threads, "client_cpus": pinned, "cold_folders": len(cold),
            "adapter_cache_entries": cache_entries, "runs": [{**asdict(r), "results": [asdict(x) for x in r.results]}
                                                             for r in measured["runs"]]}


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(argv)
    raise_on_sigterm()
    started = time.perf_counter()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="t2l-serve-bench-") as tmp:
        report = run(args, extra, Path(tmp))
    wall = time.perf_counter() - started
    report.update(config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  prompts=list(PROMPTS), cpu_cores=os.cpu_count(), load_average_at_start=load, wall_s=wall)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    chart = args.out.with_suffix(".png")
    wrote_chart = write_chart(report["arms"], chart)
    print(f"\nwall time {wall:.0f} s; wrote {args.out}" + (f" and {chart}" if wrote_chart else " (no chart: Pillow missing)"))


if __name__ == "__main__":
    main()
