"""`python -m t2l_vllm` is the `t2l-vllm` command."""

import sys

from .cli import main

sys.exit(main())
