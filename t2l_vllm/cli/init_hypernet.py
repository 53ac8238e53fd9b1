"""`t2l-vllm init-hypernet`: an untrained hypernetwork for any base model, from its config.json."""

from __future__ import annotations

import argparse

from ..encoder import encoder_settings_for
from ..hypernet.checkpoint import save_checkpoint
from ..hypernet.config import EncoderSettings, HypernetConfig, LoraSettings
from ..hypernet.model import build_hypernet, count_parameters
from ..hypernet.shapes import load_base_shapes
from .settings_args import add_setting, settings_from

_LORA = LoraSettings()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init-hypernet", help="write an untrained hypernetwork for a base model", description=__doc__)
    p.add_argument("--model", required=True, help="base model: local folder, config.json, or hub id (only config.json is read)")
    for name in ("variant", "latent_size", "head_in_size", "residual_blocks"):
        add_setting(p, HypernetConfig, name)
    add_setting(p, LoraSettings, "rank")
    add_setting(p, LoraSettings, "alpha")
    p.add_argument("--no-rslora", action="store_true", help="scale by alpha/r instead of alpha/sqrt(r)")
    p.add_argument(
        "--target-modules",
        nargs="+",
        help=f"projections to adapt (default: {' '.join(_LORA.target_modules)}, or qkv_proj where the base fuses them, as Phi-3 does)",
    )
    add_setting(p, EncoderSettings, "model", "--encoder")
    p.add_argument("--encoder-path", metavar="DIR", help="a local folder holding the `--encoder` model: loaded from there, "
                   "and its weights' hash recorded so that later loads are checked to be these weights")
    add_setting(p, EncoderSettings, "trust_remote_code")
    add_setting(p, HypernetConfig, "position_encoding")
    add_setting(p, HypernetConfig, "head_init")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights (default: %(default)s)")
    p.add_argument("-o", "--output", required=True, help="folder to write the checkpoint to")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    base = load_base_shapes(args.model)
    targets = tuple(args.target_modules or base.architecture.default_targets)
    chosen = settings_from(args, EncoderSettings)
    encoder = encoder_settings_for(chosen.model, args.encoder_path, chosen.trust_remote_code)
    lora = settings_from(args, LoraSettings, use_rslora=not args.no_rslora, target_modules=targets)
    config = settings_from(args, HypernetConfig, base=base, lora=lora, encoder=encoder)
    model = build_hypernet(config, seed=args.seed)
    digest = save_checkpoint(model, args.output)
    print(
        f"wrote {config.variant} hypernetwork ({count_parameters(model) / 1e6:.1f}M parameters) "
        f"for {' '.join(targets)} to {args.output}"
    )
    print(f"fingerprint {digest}")
    return 0
