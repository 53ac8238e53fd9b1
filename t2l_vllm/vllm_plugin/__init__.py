"""Everything that touches vLLM. Nothing outside this package imports vLLM.

`register` is the `vllm.general_plugins` entry point: vLLM calls it in every one
of its processes (API server, engine core, workers), maybe more than once, so it
is cheap, idempotent and does no device work.
"""

from __future__ import annotations


def register() -> None:
    from .configured import check_plain_launch, name_endpoint_plugin_if_configured
    from .internals import install_fixes
    from .resolver import register_resolver

    install_fixes()  # each where its probe shows the bug; a missing target refuses to serve (`check_fixes`)
    name_endpoint_plugin_if_configured()
    check_plain_launch()  # a plain `vllm serve` with $T2L_VLLM_CONFIG: its settings, before the engine starts
    register_resolver()  # t2l model names on the routes the endpoint plugin does not wrap  # before the API server loads its endpoint plugins
