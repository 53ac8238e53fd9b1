"""Importing reference (SakanaAI/text-to-lora) checkpoints.

The tests write tiny checkpoints in the reference's layout (its state-dict names,
args.yaml, adapter_config.json) and compare the imported model against
`reference_forward`, a functional restatement of the reference's `HyperModulator`
forward written from its key names alone, so a wrong mapping cannot cancel out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from t2l_vllm.errors import CheckpointError, ShapeMismatchError
from t2l_vllm.hypernet.checkpoint import load_checkpoint
from t2l_vllm.hypernet.reference_import import convert_reference_checkpoint, import_reference_checkpoint

Tensor = torch.Tensor
Sd = dict[str, Tensor]
Damage = Callable[[Path], None]

LAYERS, RANK, D, HEAD_IN, EMB = 3, 8, 16, 24, 32
SHAPES = {"q_proj": (64, 64), "v_proj": (64, 32)}  # module -> (in, out)

QV, VQ = ["q_proj", "v_proj"], ["v_proj", "q_proj"]
SHARED, AUTOREG = {"shared_AB_head": True}, {"shared_AB_head": True, "autoreg_gen": True}
# name -> (args.yaml overrides, target module order, whether heads have a bias, expected variant)
CASES: dict[str, tuple[dict[str, Any], list[str], bool, str]] = {
    "L": ({}, QV, True, "L"),
    "M": (SHARED, VQ, True, "M"),
    "S-rotary": (AUTOREG, QV, True, "S"),
    "S-learned": ({**AUTOREG, "learnable_pos_emb": True}, VQ, True, "S"),
    "recon-zscore": ({"training_task": "recon", "factorized": True, "pred_z_score": True}, QV, False, "L"),
    "recon-delta-w": ({**SHARED, "training_task": "recon", "pred_z_score": False}, QV, True, "M"),
}


# --- writing reference-layout checkpoints -----------------------------------
def reference_args(**overrides: Any) -> dict[str, Any]:
    args = {
        "model_dir": "meta-llama/Tiny-Test",
        "emb_model": "Alibaba-NLP/gte-large-en-v1.5",
        "exp_setup": "hyper_lora",
        "training_task": "sft",
        "encoder_type": "linear",
        "use_one_hot_task_emb": False,
        "shared_AB_head": False,
        "autoreg_gen": False,
        "learnable_pos_emb": False,
        "pred_z_score": True,
        "factorized": False,
        "delta_w_scaling": 10000,
        "hypernet_latent_size": D,
        "head_in_size": HEAD_IN,
        "target_modules": ["q_proj", "v_proj"],
        "mt_lora_path": None,
    }
    return {**args, **overrides}


def reference_state(args: dict[str, Any], modules: list[str], head_bias: bool) -> Sd:
    """Random tensors under the reference's names and shapes."""
    sd: Sd = {}

    def linear(name: str, n_in: int, n_out: int, bias: bool = True) -> None:
        sd[f"{name}.weight"] = torch.randn(n_out, n_in) / math.sqrt(n_in)
        if bias:
            sd[f"{name}.bias"] = torch.randn(n_out) * 0.1

    def norm(name: str, size: int) -> None:
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(size)
        sd[f"{name}.bias"] = 0.1 * torch.randn(size)

    def block(name: str) -> None:
        norm(f"{name}.mlp.0", D)
        linear(f"{name}.mlp.1", D, 4 * D)
        linear(f"{name}.mlp.4", 4 * D, D)

    linear("task_encoder.mlp.0", EMB, D // 2)
    norm("task_encoder.mlp.1", D // 2)
    sd["layer_depth_encoder.0.weight"] = torch.randn(LAYERS, D // 4)
    norm("layer_depth_encoder.1", D // 4)
    sd["layer_type_encoder.0.weight"] = torch.randn(len(modules), D // 4)
    norm("layer_type_encoder.1", D // 4)
    linear("mixer.1", D, 4 * D)
    linear("mixer.4", 4 * D, D)
    block("mlp1")
    block("mlp2")
    norm("mlp3.0", D)
    linear("mlp3.1", D, 4 * D)
    linear("mlp3.4", 4 * D, HEAD_IN)
    shared, autoreg = args["shared_AB_head"], args["autoreg_gen"]
    for m in modules:
        n_in, n_out = SHAPES[m]
        if not shared:
            width = RANK * (n_in + n_out)
        else:
            width = max(n_in, n_out) * (1 if autoreg else RANK)
        linear(f"heads.{m}", HEAD_IN, width, bias=head_bias)
        if shared:
            sd[f"out_emb.{m}.A"], sd[f"out_emb.{m}.B"] = torch.randn(D), torch.randn(D)
        for stat, shift in (("AB_offset", 0.0), ("mean_recon_target", 0.0), ("std_recon_target", 1.0)):
            sd[f"{stat}.A.{m}"] = torch.randn(LAYERS, RANK, n_in).abs() * 0.1 + shift
            sd[f"{stat}.B.{m}"] = torch.randn(LAYERS, n_out, RANK).abs() * 0.1 + shift
    if shared:
        norm("out_emb_norm", D)
    if args["learnable_pos_emb"]:
        sd["pos_emb.0.weight"] = torch.randn(RANK, D)
        norm("pos_emb.1", D)
    if args["training_task"] == "recon" and not args["factorized"]:
        for key in [k for k in sd if k.startswith("AB_offset.")]:  # the reference never trains it for recon
            sd[key] = torch.zeros_like(sd[key])
    return sd


def write_reference(folder: Path, args: dict[str, Any], modules: list[str], sd: Sd) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "hypermod.pt")
    (folder / "args.yaml").write_text(yaml.dump(args))
    adapter = {"peft_type": "LORA", "r": RANK, "lora_alpha": 16, "use_rslora": True, "lora_dropout": 0.05,
               "target_modules": modules, "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(adapter))
    return folder


def make_case(tmp_path: Path, name: str) -> tuple[Path, dict[str, Any], list[str], Sd]:
    torch.manual_seed(0)
    overrides, modules, head_bias, _ = CASES[name]
    args = reference_args(**overrides)
    sd = reference_state(args, modules, head_bias)
    return write_reference(tmp_path / "run", args, modules, sd), args, modules, sd


# --- the reference forward, restated --------------------------------------
def rope(x: Tensor) -> Tensor:
    """Llama rotary embedding (base 10000) at positions 0..P-1 of x (..., P, D)."""
    dim, positions = x.shape[-1], torch.arange(x.shape[-2], dtype=torch.float32)
    freqs = torch.outer(positions, 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim))
    emb = torch.cat([freqs, freqs], dim=-1)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


def reference_forward(
    sd: Sd, args: dict[str, Any], modules: list[str], task_emb: Tensor
) -> dict[str, tuple[Tensor, Tensor]]:
    """What the reference's `gen_lora` saves for one task embedding (1, E): {module: (A, B)} over all layers."""

    def lin(x: Tensor, p: str) -> Tensor:
        return F.linear(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"))

    def ln(x: Tensor, p: str) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"])

    def residual(x: Tensor, p: str) -> Tensor:
        return x + F.silu(lin(F.silu(lin(ln(x, f"{p}.mlp.0"), f"{p}.mlp.1")), f"{p}.mlp.4"))

    def mlp3(x: Tensor) -> Tensor:
        return F.silu(lin(F.silu(lin(ln(x, "mlp3.0"), "mlp3.1")), "mlp3.4"))

    layers = torch.arange(LAYERS)
    task = ln(lin(task_emb, "task_encoder.mlp.0"), "task_encoder.mlp.1").expand(LAYERS, -1)
    depth = ln(F.embedding(layers, sd["layer_depth_encoder.0.weight"]), "layer_depth_encoder.1")
    out = {}
    for i, m in enumerate(modules):
        n_in, n_out = SHAPES[m]
        kind = ln(F.embedding(torch.tensor([i]), sd["layer_type_encoder.0.weight"]), "layer_type_encoder.1")
        x = torch.cat([task, depth, kind.expand(LAYERS, -1)], dim=-1)
        x = residual(F.silu(lin(F.silu(lin(x, "mixer.1")), "mixer.4")), "mlp1")
        if not args["shared_AB_head"]:
            A, B = lin(mlp3(residual(x, "mlp2")), f"heads.{m}").split([RANK * n_in, RANK * n_out], dim=-1)
        else:
            parts = []
            for matrix, n in (("A", n_in), ("B", n_out)):
                h = residual(x + ln(sd[f"out_emb.{m}.{matrix}"], "out_emb_norm"), "mlp2")
                if not args["autoreg_gen"]:
                    rows = lin(mlp3(h), f"heads.{m}").view(LAYERS, RANK, -1)
                else:
                    h = h[:, None, :].expand(-1, RANK, -1)
                    if args["learnable_pos_emb"]:
                        pos = ln(F.embedding(torch.arange(RANK), sd["pos_emb.0.weight"]), "pos_emb.1")
                        h = h + residual(pos[None], "mlp2")
                    else:
                        h = residual(rope(h), "mlp2")
                    rows = lin(mlp3(h), f"heads.{m}")
                parts.append(rows[..., :n].reshape(LAYERS, -1))
            A, B = parts
        A, B = A.reshape(LAYERS, RANK, n_in), B.reshape(LAYERS, RANK, n_out).transpose(-1, -2)
        if args["training_task"] == "sft":
            A, B = A + sd[f"AB_offset.A.{m}"], B + sd[f"AB_offset.B.{m}"]
        elif args["factorized"]:
            if args["pred_z_score"]:
                A = A * (sd[f"std_recon_target.A.{m}"] + 1e-10) + sd[f"mean_recon_target.A.{m}"]
                B = B * (sd[f"std_recon_target.B.{m}"] + 1e-10) + sd[f"mean_recon_target.B.{m}"]
            A, B = A + sd[f"AB_offset.A.{m}"], B + sd[f"AB_offset.B.{m}"]
        else:
            A, B = A / math.sqrt(args["delta_w_scaling"]), B / math.sqrt(args["delta_w_scaling"])
        out[m] = (A, B)
    return out


# --- behaviour --------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_import_matches_reference_forward(tmp_path: Path, name: str) -> None:
    folder, args, modules, sd = make_case(tmp_path, name)
    model = import_reference_checkpoint(folder)
    assert not model.training
    assert list(model.config.lora.target_modules) == modules
    assert model.config.variant == CASES[name][3]
    task_emb = torch.randn(2, EMB)
    with torch.no_grad():
        ours = model(task_emb)
        for n in range(2):
            for m, (A, B) in reference_forward(sd, args, modules, task_emb[n : n + 1]).items():
                torch.testing.assert_close(ours[m].A[n], A, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(ours[m].B[n], B, rtol=1e-5, atol=1e-6)


def test_config_read_from_reference_files(tmp_path: Path) -> None:
    folder, *_ = make_case(tmp_path, "S-learned")
    config = import_reference_checkpoint(folder).config
    assert (config.variant, config.position_encoding) == ("S", "learned")
    assert (config.latent_size, config.head_in_size) == (D, HEAD_IN)
    lora = config.lora
    # use_rslora: true in the files; served at alpha/r, the scaling the reference's results were measured at
    assert (lora.rank, lora.alpha, lora.use_rslora, lora.dropout) == (RANK, 16.0, False, 0.05)
    assert lora.calibration == "published" and lora.scaling == 16.0 / RANK
    as_written = import_reference_checkpoint(folder, rslora_as_written=True).config.lora
    assert (as_written.use_rslora, as_written.calibration, as_written.scaling) == (True, "as_written", 16.0 / math.sqrt(RANK))
    enc = config.encoder
    assert (enc.model, enc.dim, enc.pooling, enc.scale, enc.add_full_stop, enc.trust_remote_code) == (
        "Alibaba-NLP/gte-large-en-v1.5", EMB, "cls", "sqrt_dim", True, True)
    assert config.base.name == "meta-llama/Tiny-Test" and config.base.num_layers == LAYERS
    for m, (n_in, n_out) in SHAPES.items():
        shape = config.base.module_shape(m)
        assert (shape.in_features, shape.out_features) == (n_in, n_out)
    assert config.output.offset and not config.output.zscore and config.output.scale == 1.0


def test_output_transforms(tmp_path: Path) -> None:
    expected = {"recon-zscore": (True, True, 1.0), "recon-delta-w": (False, False, 0.01), "L": (False, True, 1.0)}
    for name, want in expected.items():
        folder, *_ = make_case(tmp_path / name, name)
        out = import_reference_checkpoint(folder).config.output
        assert (out.zscore, out.offset, out.scale) == want


def test_zero_offset_is_not_applied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    args = reference_args()
    sd = reference_state(args, ["q_proj", "v_proj"], True)
    sd.update({k: torch.zeros_like(v) for k, v in sd.items() if k.startswith("AB_offset.")})
    model = import_reference_checkpoint(write_reference(tmp_path, args, ["q_proj", "v_proj"], sd))
    assert not model.config.output.offset


def test_convert_round_trip_and_checkpoint_subfolder(tmp_path: Path) -> None:
    folder, args, modules, sd = make_case(tmp_path, "M")
    nested = folder / "checkpoints" / "it_100"
    nested.mkdir(parents=True)
    (folder / "hypermod.pt").rename(nested / "hypermod.pt")
    assert import_reference_checkpoint(nested).config.variant == "M"  # the folder works as well as the file
    digest = convert_reference_checkpoint(nested / "hypermod.pt", tmp_path / "converted")
    model, loaded_digest = load_checkpoint(tmp_path / "converted")
    assert loaded_digest == digest
    task_emb = torch.randn(1, EMB)
    with torch.no_grad():
        ours = model(task_emb)
    for m, (A, B) in reference_forward(sd, args, modules, task_emb).items():
        torch.testing.assert_close(ours[m].A[0], A, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours[m].B[0], B, rtol=1e-5, atol=1e-6)


def write_base(folder: Path, layers: int = LAYERS) -> Path:
    folder.mkdir()
    config = {"model_type": "llama", "num_hidden_layers": layers, "hidden_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_base_model_recorded_when_it_fits(tmp_path: Path) -> None:
    folder, *_ = make_case(tmp_path, "L")
    base_model = str(write_base(tmp_path / "base"))
    base = import_reference_checkpoint(folder, base_model=base_model).config.base
    assert (base.name, base.model_type, base.head_dim, base.num_key_value_heads) == (base_model, "llama", 16, 2)


def test_base_model_that_does_not_fit(tmp_path: Path) -> None:
    folder, *_ = make_case(tmp_path, "L")
    with pytest.raises(ShapeMismatchError, match="layers: hypernetwork has 3, base model has 4"):
        import_reference_checkpoint(folder, base_model=str(write_base(tmp_path / "base", layers=4)))


def test_persisted_rotary_frequencies(tmp_path: Path) -> None:
    folder, args, modules, sd = make_case(tmp_path, "S-rotary")
    sd["rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, D, 2).float() / D)
    write_reference(folder, args, modules, sd)
    import_reference_checkpoint(folder)
    sd["rotary_emb.inv_freq"] = sd["rotary_emb.inv_freq"] * 2
    write_reference(folder, args, modules, sd)
    with pytest.raises(CheckpointError, match="rotary_emb.inv_freq"):
        import_reference_checkpoint(folder)


# --- errors -----------------------------------------------------------------
def _delete(name: str) -> Damage:
    return lambda folder: (folder / name).unlink()


def _overwrite(name: str, text: str) -> Damage:
    def edit(folder: Path) -> None:
        (folder / name).write_text(text)
    return edit


def _edit_args(**changes: Any) -> Damage:
    def edit(folder: Path) -> None:
        args = yaml.safe_load((folder / "args.yaml").read_text())
        (folder / "args.yaml").write_text(yaml.dump({**args, **changes}))
    return edit


def _edit_adapter(**changes: Any) -> Damage:
    def edit(folder: Path) -> None:
        doc = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**doc, **changes}))
    return edit


def _edit_state(edit_sd: Callable[[Sd], Any]) -> Damage:
    def edit(folder: Path) -> None:
        sd = torch.load(folder / "hypermod.pt", weights_only=True)
        edit_sd(sd)
        torch.save(sd, folder / "hypermod.pt")
    return edit


def _set(key: str, tensor: Tensor) -> Damage:
    def edit(sd: Sd) -> None:
        sd[key] = tensor
    return _edit_state(edit)


def _pop(key: str) -> Damage:
    return _edit_state(lambda sd: sd.pop(key))


def _save_list(folder: Path) -> None:
    torch.save([1, 2], folder / "hypermod.pt")


ERRORS: dict[str, tuple[Damage, list[str]]] = {
    "no hypermod.pt": (_delete("hypermod.pt"), ["has no hypermod.pt"]),
    "no args.yaml": (_delete("args.yaml"), ["has no args.yaml"]),
    "no adapter_config.json": (_delete("adapter_config.json"), ["has no adapter_config.json"]),
    "corrupt hypermod.pt": (_overwrite("hypermod.pt", "not a pickle"), ["hypermod.pt", "cannot be read"]),
    "corrupt args.yaml": (_overwrite("args.yaml", "a: [1"), ["args.yaml", "not readable YAML"]),
    "corrupt adapter_config.json": (_overwrite("adapter_config.json", "{"), ["adapter_config.json", "not readable"]),
    "wrong shape": (
        _set("mlp2.mlp.1.weight", torch.zeros(4 * D, D + 1)),
        ["`mlp2.mlp.1.weight` has shape (64, 17)", "imply (64, 16)"],
    ),
    "wrong rank": (_edit_adapter(r=16), ["`AB_offset.A.q_proj` has shape (3, 8, 64)", "imply (3, 16, 64)"]),
    "unexpected key": (_set("extra.weight", torch.zeros(1)), ["unexpected keys ['extra.weight']"]),
    "missing key": (_pop("mlp2.mlp.4.bias"), ["missing keys ['mlp2.mlp.4.bias']"]),
    "missing offset": (_pop("AB_offset.B.v_proj"), ["lacks `AB_offset.B.v_proj`"]),
    "not a state dict": (_save_list, ["not a state dict"]),
    "vq encoder": (_edit_args(encoder_type="vq"), ["args.yaml", "encoder_type='vq' is not supported"]),
    "one-hot tasks": (_edit_args(use_one_hot_task_emb=True), ["use_one_hot_task_emb=True is not supported"]),
    "autoreg without shared head": (_edit_args(autoreg_gen=True), ["autoreg_gen=True is not supported"]),
    "LLM as encoder": (_edit_args(emb_model=""), ["emb_model='' is not supported", "base LLM"]),
    "SFR encoder": (_edit_args(emb_model="Salesforce/SFR-Embedding-2_R"), ["emb_model='Salesforce/SFR-Embedding-2_R'"]),
    "vera": (_edit_adapter(peft_type="VERA"), ["adapter_config.json", "peft_type='VERA' is not supported"]),
    "unknown task": (_edit_args(training_task="dpo"), ["training_task='dpo' is not supported"]),
    "z-score without factorized": (
        _edit_args(training_task="recon", pred_z_score=True),
        ["pred_z_score=True is not supported"],
    ),
    "rank vLLM cannot serve": (_edit_adapter(r=3), ["adapter_config.json", "`rank` must be one that vLLM serves"]),
    "regex target modules": (_edit_adapter(target_modules=".*proj"), ["target_modules must be a list"]),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_import_errors(tmp_path: Path, name: str) -> None:
    folder, *_ = make_case(tmp_path, "L")
    damage, fragments = ERRORS[name]
    damage(folder)
    with pytest.raises(CheckpointError) as info:
        import_reference_checkpoint(folder)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        import_reference_checkpoint(tmp_path / "nowhere")
