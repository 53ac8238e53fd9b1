"""`python -m t2l_vllm` is the `t2l-vllm` command."""

from .cli import console

console()
