"""`t2l-vllm info`: what a hypernetwork is and the shapes of every matrix it generates."""

from __future__ import annotations

import argparse

from ..hypernet.checkpoint import ENCODER_WEIGHTS_FILE, load_checkpoint
from ..hypernet.model import count_parameters
from .common import add_hypernet_option, hypernet_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a hypernetwork checkpoint", description=__doc__)
    add_hypernet_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    folder = hypernet_dir(args)
    model, digest = load_checkpoint(folder)
    c = model.config
    adapter_params = sum(
        c.base.num_layers * c.lora.rank * (s.in_features + s.out_features) for s in model.shapes.values()
    )
    print(f"hypernetwork  {folder}")
    print(f"variant       {c.variant} (latent {c.latent_size}, head input {c.head_in_size}, {c.residual_blocks} residual blocks)")
    print(f"parameters    {count_parameters(model):,} ({count_parameters(model) / 1e6:.1f}M)")
    print(f"fingerprint   {digest}")
    tuned = f", top {c.encoder.tuned_layers} layers tuned ({ENCODER_WEIGHTS_FILE})" if c.encoder.tuned_layers else ""
    print(f"encoder       {c.encoder.model} ({c.encoder.dim}-d, pooling {c.encoder.pooling}, scale {c.encoder.scale}{tuned})")
    print(f"base model    {c.base.name or '?'} ({c.base.model_type}, {c.base.num_layers} layers)")
    print(f"lora          {c.lora.describe_scaling()}")
    print(f"adapter       {adapter_params:,} parameters ({adapter_params * 4 / 2**20:.2f} MiB float32)")
    print("generated matrices (every layer 0..%d):" % (c.base.num_layers - 1))
    for module, s in model.shapes.items():
        print(f"  {module:<10} lora_A [{c.lora.rank}, {s.in_features}]  lora_B [{s.out_features}, {c.lora.rank}]")
    return 0
