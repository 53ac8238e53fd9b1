"""`t2l-vllm init-hypernet`: an untrained hypernetwork for any base model, from its config.json."""

from __future__ import annotations

import argparse

from ..encoder import DEFAULT_ENCODER, encoder_settings_for
from ..hypernet.checkpoint import save_checkpoint
from ..hypernet.config import VARIANTS, HypernetConfig, LoraSettings
from ..hypernet.model import build_hypernet, count_parameters
from ..hypernet.shapes import load_base_shapes

_CONFIG = HypernetConfig.__dataclass_fields__
_LORA = LoraSettings()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init-hypernet", help="write an untrained hypernetwork for a base model", description=__doc__)
    p.add_argument("--model", required=True, help="base model: local folder, config.json, or hub id (only config.json is read)")
    p.add_argument("--variant", choices=VARIANTS, default=_CONFIG["variant"].default, help="L, M or S (default: %(default)s)")
    p.add_argument("--latent-size", type=int, default=_CONFIG["latent_size"].default, help="default: %(default)s")
    p.add_argument("--head-in-size", type=int, default=_CONFIG["head_in_size"].default, help="default: %(default)s")
    p.add_argument("--rank", type=int, default=_LORA.rank, help="LoRA rank (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=_LORA.alpha, help="LoRA alpha (default: %(default)s)")
    p.add_argument("--no-rslora", action="store_true", help="scale by alpha/r instead of alpha/sqrt(r)")
    p.add_argument(
        "--target-modules",
        nargs="+",
        help=f"projections to adapt (default: {' '.join(_LORA.target_modules)}, or qkv_proj where the base fuses them, as Phi-3 does)",
    )
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="sentence-transformers model (default: %(default)s)")
    p.add_argument("--position-encoding", choices=["rotary", "learned"], default="rotary", help="S variant only")
    p.add_argument("--head-init", choices=["hyperinit", "random"], default="hyperinit", help="hyperinit: start from delta-W = 0 (default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="folder to write the checkpoint to")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    base = load_base_shapes(args.model)
    targets = tuple(args.target_modules or base.architecture.default_targets)
    config = HypernetConfig(
        base=base,
        variant=args.variant,
        latent_size=args.latent_size,
        head_in_size=args.head_in_size,
        lora=LoraSettings(rank=args.rank, alpha=args.alpha, use_rslora=not args.no_rslora, target_modules=targets),
        encoder=encoder_settings_for(args.encoder),
        position_encoding=args.position_encoding,
        head_init=args.head_init,
    )
    model = build_hypernet(config, seed=args.seed)
    digest = save_checkpoint(model, args.output)
    print(
        f"wrote {config.variant} hypernetwork ({count_parameters(model) / 1e6:.1f}M parameters) "
        f"for {' '.join(targets)} to {args.output}"
    )
    print(f"fingerprint {digest}")
    return 0
