"""`t2l-vllm route`: calibrate, evaluate and try the embedding router on a task library.

    route fit LIBRARY LABELLED [-o OUT]   pick the threshold that maximises accuracy, write it
    route eval LIBRARY LABELLED           per-task table, then a JSON line: accuracy, coverage, n
    route query LIBRARY QUERY...          what the router decides for each query

LIBRARY is a YAML task library (`starter` names the one shipped with t2l_vllm);
LABELLED is JSONL, one {"query": ..., "task": name or null} a line.
"""

from __future__ import annotations

import argparse
import json

from ..router import EmbeddingRouter, RouterSettings, TaskLibrary, evaluate, fit_threshold, load_labelled
from .settings_args import add_setting, settings_from


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("route", help="calibrate, evaluate and try the router", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = actions.add_parser("fit", help="pick and write the threshold")
    fit.add_argument("library")
    fit.add_argument("labelled")
    fit.add_argument("-o", "--output", help="write the calibrated library here (default: update LIBRARY in place)")
    ev = actions.add_parser("eval", help="accuracy and coverage on labelled queries")
    ev.add_argument("library")
    ev.add_argument("labelled")
    query = actions.add_parser("query", help="route queries and print the decisions")
    query.add_argument("library")
    query.add_argument("queries", nargs="+", metavar="QUERY")
    for action in (fit, ev, query):
        add_router_options(action, prefix="")
    p.set_defaults(run=run)


def add_router_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, prefix: str = "router-") -> None:
    """Options shared by `route` and `serve --router` (where they carry a `router-` prefix)."""
    add_setting(parser, RouterSettings, "threshold", f"--{prefix}threshold", type=float)
    add_setting(parser, RouterSettings, "fallback", f"--{prefix}fallback")
    add_setting(parser, RouterSettings, "scoring", f"--{prefix}scoring")
    add_setting(parser, RouterSettings, "top_k", f"--{prefix}top-k")


def router_settings(args: argparse.Namespace, library: str, base: RouterSettings | None = None) -> RouterSettings:
    """`base` (default: RouterSettings()) for `library`, with the router flags the user gave on top."""
    return settings_from(args, RouterSettings, base, library=library)


def run(args: argparse.Namespace) -> int:
    library = TaskLibrary.load(args.library)
    router = EmbeddingRouter(library, router_settings(args, args.library))
    if args.action == "query":
        for decision, query in zip(router.route(args.queries), args.queries):
            print(json.dumps({"query": query, "task": decision.label, "score": round(decision.score, 4), "description": decision.description}))
        return 0
    items = load_labelled(args.labelled, library)
    if args.action == "fit":
        best = router.best_tasks([i.query for i in items])
        threshold, accuracy = fit_threshold(best, [i.task for i in items])
        target = library.write_threshold(threshold, args.output)
        print(f"threshold {threshold:.4f}: accuracy {accuracy:.4f} on {len(items)} labelled queries; wrote {target}")
        return 0
    report = evaluate(router, items)
    print(f"{'task':<32} {'n':>4} {'recall':>7} {'precision':>9}")
    for name, row in report.per_task.items():
        print(f"{name:<32} {int(row['n']):>4} {row['recall']:>7.3f} {row['precision']:>9.3f}")
    print(f"threshold {router.threshold:.4f}, fallback {router.fallback}")
    print(report.to_json())
    return 0
