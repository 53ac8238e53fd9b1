"""`t2l-vllm train`: train hypernetworks and baseline LoRAs.

    train encoder --data TRAIN.jsonl --hypernet INIT -o OUT                       tune the task encoder first (optional)
    train sft   --data TRAIN.jsonl [--eval EVAL.jsonl] [--hypernet INIT] -o OUT   T2L end to end (SFT)
    train lora  --data TRAIN.jsonl --model BASE [--task NAME] -o OUT              a plain LoRA baseline
    train recon --library MANIFEST --hypernet INIT -o OUT                         T2L by reconstruction
    train base  -o OUT [--steps N] [--init-from BASE]                             the toy world's tiny base model

Records are JSONL: {"task", "descriptions": [...], "input" or "messages", "output"}.
`train lora` trains one LoRA on every record (the multi-task baseline) or on one
task's records (`--task`, a task-specific LoRA and a reconstruction target).
`train encoder` tunes the top layers of INIT's task encoder so that the
records' descriptions of one task lie together and of different tasks apart
(`train.encoder_tuning`), and writes INIT as a checkpoint that reads the tuned
encoder: give that to `train sft` or `train recon` as `--hypernet`.
Every training flag's default is its settings class's (`SFTSettings`,
`ReconSettings`, `EncoderTuningSettings`, `ToyBaseSettings`); all write
`step-N/` checkpoints with `--checkpoint-every` and continue from one with
`--resume`.
"""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..hypernet.config import LoraSettings
from ..train.encoder_tuning import EncoderTuningSettings
from ..train.recon import ReconSettings
from ..train.sft import SFTSettings
from .settings_args import add_setting, add_settings_arguments, settings_from


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..toy.base import ToyBaseSettings  # `train base`'s flags (only the CLI and t2l_vllm.toy import the toy world)

    p = sub.add_parser("train", help="train hypernetworks and baseline LoRAs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    sft = kinds.add_parser("sft", help="train a hypernetwork end to end through the base model")
    sft.add_argument("--hypernet", help="initial hypernetwork (from `init-hypernet`; default: the embedded default)")
    lora = kinds.add_parser("lora", help="train a plain LoRA (task-specific or multi-task baseline)")
    lora.add_argument("--task", help="train on this task's records only")
    for name in ("rank", "alpha", "target_modules"):
        add_setting(lora, LoraSettings, name)
    lora.add_argument("--no-rslora", action="store_true", help="scale by alpha/r instead of alpha/sqrt(r)")
    for parser in (sft, lora):
        parser.add_argument("--data", required=True, help="training records (JSONL)")
        parser.add_argument("--eval", help="evaluation records (JSONL)")
        parser.add_argument("--model", help="base model (default for sft: the hypernetwork's)")
        parser.add_argument("-o", "--output", required=True, help="folder for the result and checkpoints (step-N/)")
        parser.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint folder written by this command")
        parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
        add_settings_arguments(parser, SFTSettings)
    recon = kinds.add_parser("recon", help="fit a hypernetwork to a library of LoRA folders (`--zscore`: predict z-scores)")
    recon.add_argument("--library", required=True, help="manifest listing LoRA folders with their task and descriptions")
    recon.add_argument("--hypernet", required=True, help="initial hypernetwork (from `init-hypernet`)")
    recon.add_argument("-o", "--output", required=True)
    recon.add_argument("--resume", metavar="CHECKPOINT")
    recon.add_argument("--device", default="auto")
    add_settings_arguments(recon, ReconSettings)
    encoder = kinds.add_parser("encoder", help="tune the task encoder's top layers to the training tasks, before SFT or recon")
    encoder.add_argument("--data", required=True, help="training records (JSONL); only their tasks and descriptions are read")
    encoder.add_argument("--hypernet", required=True, help="initial hypernetwork (from `init-hypernet`), whose encoder is tuned")
    encoder.add_argument("-o", "--output", required=True)
    encoder.add_argument("--resume", metavar="CHECKPOINT")
    encoder.add_argument("--device", default="auto")
    add_settings_arguments(encoder, EncoderTuningSettings)
    base = kinds.add_parser("base", help="train the toy world's tiny base model from scratch, the task given by a cue")
    base.add_argument("-o", "--output", required=True)
    base.add_argument("--resume", metavar="CHECKPOINT")
    base.add_argument("--init-from", metavar="BASE", help="start from a trained toy base model (fine-tuning: a fresh schedule; cue parts a smaller world lacked start fresh)")
    add_settings_arguments(base, ToyBaseSettings)
    p.set_defaults(run=run)


def _under_torchrun() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run(args: argparse.Namespace) -> int:
    if args.kind in ("recon", "base", "encoder") and _under_torchrun():
        raise ConfigError(f"`train {args.kind}` runs in one process; only `train sft` and `train lora` run under torchrun.")
    runs = {"sft": _run_supervised, "lora": _run_supervised, "recon": _run_recon, "encoder": _run_encoder, "base": _run_base}
    return runs[args.kind](args)


def _run_base(args: argparse.Namespace) -> int:
    from ..toy.base import ToyBaseSettings, train_toy_base

    report = train_toy_base(args.output, settings_from(args, ToyBaseSettings), resume=args.resume, init_from=args.init_from)
    print(f"{report['steps']} steps; mean exact match {report['mean_with_cue']:.3f} with the task's cue, "
          f"{report['mean_without_cue']:.3f} without; wrote {args.output}")
    return 0


def _device(name: str):
    import torch

    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def _distributed_device(name: str):
    """This process's device; under torchrun (WORLD_SIZE > 1) it also joins the process group."""
    import os

    import torch

    device = _device(name)
    if _under_torchrun():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _run_supervised(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..hypernet.checkpoint import load_checkpoint
    from ..hypernet.shapes import load_base_shapes
    from ..train.data import load_sft_records
    from ..train.sft import SFTTrainer
    from ..train.sources import HypernetSource, SingleLoRA
    from .common import hypernet_dir

    settings = settings_from(args, SFTSettings)
    records = load_sft_records(args.data)
    eval_records = load_sft_records(args.eval) if args.eval else []
    device = _distributed_device(args.device)
    if args.kind == "sft":
        from ..encoder import load_task_encoder

        folder = hypernet_dir(args)
        hypernet, _ = load_checkpoint(folder, device=device)
        model = args.model or hypernet.config.base.name
        descriptions = [d for r in (*records, *eval_records) for d in r.descriptions]
        source = HypernetSource(hypernet, load_task_encoder(folder, hypernet.config, device=device), descriptions)
    else:
        if not args.model:
            raise ConfigError("`train lora` needs `--model`.")
        model = args.model
        if args.task:
            records = [r for r in records if r.task == args.task]
            eval_records = [r for r in eval_records if r.task == args.task]
            if not records:
                raise ConfigError(f"no record in `{args.data}` has task `{args.task}`.")
        lora = settings_from(args, LoraSettings, use_rslora=not args.no_rslora)
        source = SingleLoRA(load_base_shapes(model), lora, seed=settings.seed).to(device)
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(model)
    trainer = SFTTrainer(source, base, tokenizer, records, settings, eval_records)
    if args.resume:
        trainer.resume(args.resume)
    trainer.train(output=args.output, log=print)
    if trainer.rank == 0:
        if eval_records:
            print(f"eval loss {trainer.evaluate():.4f}")
        print(f"wrote {args.output}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _run_encoder(args: argparse.Namespace) -> int:
    from ..hypernet.checkpoint import load_checkpoint
    from ..train.data import load_sft_records
    from ..train.encoder_tuning import EncoderTuner, descriptions_by_task

    hypernet, _ = load_checkpoint(args.hypernet)
    descriptions = descriptions_by_task(load_sft_records(args.data))
    trainer = EncoderTuner(hypernet, descriptions, settings_from(args, EncoderTuningSettings), device=_device(args.device))
    if args.resume:
        trainer.resume(args.resume)
    losses = trainer.train(args.output, log=print)
    print(f"final loss {losses[-1]:.4f}; wrote {args.output}" if losses else f"nothing to do; {args.output}")
    return 0


def _run_recon(args: argparse.Namespace) -> int:
    from ..encoder import load_task_encoder
    from ..hypernet.checkpoint import load_checkpoint
    from ..hypernet.model import build_hypernet
    from ..train.recon import ReconTrainer, load_recon_library, with_zscore

    targets = load_recon_library(args.library)
    device = _device(args.device)
    initial, _ = load_checkpoint(args.hypernet)
    hypernet = initial
    settings = settings_from(args, ReconSettings)
    if settings.zscore and not initial.config.output.zscore:
        hypernet = build_hypernet(with_zscore(initial.config))
        hypernet.load_state_dict(initial.state_dict(), strict=False)  # the statistics buffers are new
    hypernet = hypernet.to(device)
    trainer = ReconTrainer(hypernet, load_task_encoder(args.hypernet, hypernet.config, device=device), targets, settings)
    if args.resume:
        trainer.resume(args.resume)
    losses = trainer.train(args.output, log=print)
    print(f"final L1 loss {losses[-1]:.5f}; wrote {args.output}" if losses else f"nothing to do; {args.output}")
    return 0
