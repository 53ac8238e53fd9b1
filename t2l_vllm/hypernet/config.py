"""What a user asks for when making a hypernetwork: plain dataclasses, checked on creation.

`HypernetConfig` is saved beside the weights as JSON and is everything needed to
rebuild the module (base-model shapes, encoder, LoRA settings, variant), so a
checkpoint never needs the base model or the training arguments to be used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from ..errors import ConfigError
from .shapes import DEFAULT_TARGETS, MODULE_FEATURES, BaseModelShapes

VARIANTS = ("L", "M", "S")
POSITION_ENCODINGS = ("rotary", "learned")
HEAD_INITS = ("hyperinit", "random")
# HypernetConfig fields (dotted: of a section) newer than the checkpoint format (see `to_dict`)
ADDED_FIELDS = ("residual_blocks", "encoder.tuned_layers", "encoder.weights_sha256", "lora.calibration")
RESIDUAL_BLOCKS = (0, 1, 2)  # block1 (before the variant decoder), block2 (inside it); the reference has both
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
# How a hypernetwork's adapters are scaled when served, relative to how it came to be (see `LoraSettings`).
CALIBRATIONS = ("trained", "published", "as_written")
# Ranks vLLM accepts for `--max-lora-rank`; an adapter of another rank cannot be served.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class LoraSettings:
    """The adapters a hypernetwork writes (the reference: r=8, alpha=16, rsLoRA, q/v).

    `use_rslora` is what every generated adapter's `adapter_config.json` says, so
    it is the scaling PEFT and vLLM serve it at. `calibration` says why that is
    the right one. "trained": this project's own hypernetworks, served as they
    were trained. "published": an imported reference checkpoint, served at
    alpha/r: the reference's files say `use_rslora: true`, but its published
    results were measured on vLLM 0.5.4, which applied alpha/r whatever the flag
    said (vLLM honours the flag since rsLoRA support, PR #6909), and honouring it
    makes those adapters sqrt(r) times stronger than the ones measured (2.83x at
    r=8). "as_written": an imported reference checkpoint served with its flag as
    written (`import-reference --rslora-as-written`).
    """

    rank: int = field(default=8, metadata={"help": "LoRA rank r of every generated adapter"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha"})
    use_rslora: bool = field(default=True, metadata={"help": "scale B @ A by alpha/sqrt(r) (rsLoRA) instead of alpha/r"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout written into the adapter config"})
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGETS, metadata={"help": "projections to adapt"})
    calibration: str = field(default="trained", metadata={
        "help": "why the adapters are scaled as they are: trained (as trained), published (a reference import, at the "
                "alpha/r its results were measured at), as_written (a reference import, its use_rslora flag as written)",
        "choices": CALIBRATIONS})

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ConfigError(f"`rank` must be positive, got {self.rank}.")
        if self.rank not in VLLM_LORA_RANKS:
            raise ConfigError(f"`rank` must be one that vLLM serves {VLLM_LORA_RANKS}, got {self.rank}.")
        if self.alpha <= 0:
            raise ConfigError(f"`alpha` must be positive, got {self.alpha}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"`dropout` must be in [0, 1), got {self.dropout}.")
        if not self.target_modules:
            raise ConfigError("`target_modules` must name at least one module.")
        unknown = [m for m in self.target_modules if m not in MODULE_FEATURES]
        if unknown:
            raise ConfigError(f"`target_modules` has unsupported {unknown}; choose from {sorted(MODULE_FEATURES)}.")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ConfigError(f"`target_modules` repeats a module: {list(self.target_modules)}.")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(f"`calibration` must be one of {CALIBRATIONS}, got {self.calibration!r}.")
        if self.calibration == "published" and self.use_rslora:
            raise ConfigError("`calibration` published serves at alpha/r, the scaling the reference's results were measured at: `use_rslora` must be false.")

    @property
    def scaling(self) -> float:
        """The factor PEFT and vLLM apply to B @ A: alpha/sqrt(r) with rsLoRA, else alpha/r."""
        return self.alpha / (self.rank**0.5 if self.use_rslora else self.rank)

    def describe_scaling(self) -> str:
        """One line on the effective scaling and why it is the one served (what `info` and `check` print)."""
        rule = "alpha/sqrt(r)" if self.use_rslora else "alpha/r"
        line = f"r={self.rank} alpha={self.alpha:g} rslora={self.use_rslora}: {rule} = {self.scaling:.4g} ({self.calibration}"
        if self.calibration == "published":
            honoured = self.alpha / self.rank**0.5
            line += (f": the reference's files say use_rslora=true ({honoured:.4g}, {honoured / self.scaling:.2f}x stronger); "
                     "its published results were measured at alpha/r on vLLM 0.5.4")
        elif self.calibration == "as_written":
            line += ": the reference's use_rslora flag as written, not the scaling its published results were measured at"
        return line + ")"


@dataclass(frozen=True)
class EncoderSettings:
    """How task descriptions become vectors.

    `model` is a sentence-transformers name or path. `pooling` overrides the model's
    own pooling ("cls" for gte-large-en-v1.5, as the reference does). `add_full_stop`
    and `scale` reproduce the reference's text and embedding normalisation:
    "sqrt_dim" L2-normalises and multiplies by sqrt(dim), "unit" L2-normalises only.
    `tuned_layers` > 0: the model's top layers were tuned to the hypernetwork's
    training tasks (`train/encoder_tuning.py`); their weights are part of the
    hypernetwork's checkpoint, since its input depends on them.
    `weights_sha256`, when recorded, is the identity of the published weights
    (`encoder/identity.py`): with it the encoder may load from any folder that
    holds those bytes, and a folder holding others is refused.
    """

    model: str = field(default=DEFAULT_ENCODER, metadata={"help": "sentence-transformers model, by name or path"})
    dim: int = field(default=384, metadata={"help": "the model's embedding size"})
    pooling: Literal["cls", "mean", "model"] = field(default="model", metadata={"help": "cls, mean, or the model's own pooling"})
    add_full_stop: bool = field(default=True, metadata={"help": "append '.' to a description ending in a letter"})
    scale: Literal["sqrt_dim", "unit", "none"] = field(default="sqrt_dim", metadata={"help": "L2-normalise times sqrt(dim), L2-normalise, or leave"})
    trust_remote_code: bool = field(default=False, metadata={"help": "let sentence-transformers run the model's own code"})
    tuned_layers: int = field(default=0, metadata={"help": "top transformer layers tuned to the hypernetwork's tasks (weights in its checkpoint)"})
    weights_sha256: str = field(default="", metadata={"help": "sha256 of the encoder's weight files (empty: named by `model` alone)"})

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ConfigError(f"encoder `dim` must be positive, got {self.dim}.")
        if self.pooling not in ("cls", "mean", "model"):
            raise ConfigError(f"encoder `pooling` must be cls, mean or model, got {self.pooling!r}.")
        if self.scale not in ("sqrt_dim", "unit", "none"):
            raise ConfigError(f"encoder `scale` must be sqrt_dim, unit or none, got {self.scale!r}.")
        if self.tuned_layers < 0:
            raise ConfigError(f"encoder `tuned_layers` must be 0 or more, got {self.tuned_layers}.")


@dataclass(frozen=True)
class OutputTransform:
    """How raw head outputs become A and B (only reconstruction-trained imports need it).

    `zscore`: the heads predict z-scores against per-element statistics kept in the
    checkpoint; `offset`: a per-layer A/B offset is added (the reference's AB_offset);
    `scale`: both A and B are multiplied by it (the reference's 1/sqrt(delta_w_scaling)).
    """

    zscore: bool = False
    offset: bool = False
    scale: float = 1.0


@dataclass(frozen=True)
class HypernetConfig:
    """Everything that defines a Text-to-LoRA hypernetwork, saved as `config.json`."""

    base: BaseModelShapes
    variant: Literal["L", "M", "S"] = field(default="M", metadata={"help": "L, M or S (the paper's sizes)", "choices": VARIANTS})
    latent_size: int = field(default=128, metadata={"help": "width of the hypernetwork's latent layers"})
    head_in_size: int = field(default=512, metadata={"help": "width of the input to the output heads"})
    lora: LoraSettings = field(default_factory=LoraSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    position_encoding: Literal["rotary", "learned"] = field(
        default="rotary", metadata={"help": "how layer positions are encoded (S variant only)", "choices": POSITION_ENCODINGS}
    )
    head_init: Literal["hyperinit", "random"] = field(
        default="hyperinit", metadata={"help": "hyperinit: start from delta-W = 0", "choices": HEAD_INITS}
    )
    output: OutputTransform = field(default_factory=OutputTransform)
    dropout: float = field(default=0.05, metadata={"help": "dropout inside the hypernetwork"})
    residual_blocks: int = field(default=2, metadata={
        "help": "residual blocks in the trunk: 2 as the reference; with a few dozen training tasks, 0 reconstructs "
                "adapters for unseen tasks better (python -m t2l_vllm.toy.cue_probe; not shown for SFT)", "choices": RESIDUAL_BLOCKS})

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"`variant` must be one of {VARIANTS}, got {self.variant!r}.")
        if self.latent_size <= 0 or self.latent_size % 4:
            raise ConfigError(f"`latent_size` must be a positive multiple of 4, got {self.latent_size}.")
        if self.variant == "S" and self.position_encoding == "rotary" and self.latent_size % 2:
            raise ConfigError(f"rotary positions need an even `latent_size`, got {self.latent_size}.")
        if self.head_in_size <= 0:
            raise ConfigError(f"`head_in_size` must be positive, got {self.head_in_size}.")
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ConfigError(f"`position_encoding` must be rotary or learned, got {self.position_encoding!r}.")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"`head_init` must be hyperinit or random, got {self.head_init!r}.")
        if self.residual_blocks not in RESIDUAL_BLOCKS:
            raise ConfigError(f"`residual_blocks` must be one of {RESIDUAL_BLOCKS}, got {self.residual_blocks!r}.")
        for module in self.lora.target_modules:
            self.base.module_shape(module)

    def to_dict(self) -> dict[str, Any]:
        """The config as saved and fingerprinted. A field added after the first checkpoint format is
        written only when it differs from its default, so older checkpoints keep their fingerprints."""
        data = asdict(self)
        data["base"] = self.base.to_dict()
        data["lora"]["target_modules"] = list(self.lora.target_modules)
        for path in ADDED_FIELDS:
            *parents, name = path.split(".")
            section, owner = data, self
            for parent in parents:
                section, owner = section[parent], getattr(owner, parent)
            if section[name] == type(owner).__dataclass_fields__[name].default:
                del section[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HypernetConfig":
        try:
            return cls(
                base=BaseModelShapes.from_dict(data["base"]),
                lora=LoraSettings(**{**data.get("lora", {}), "target_modules": tuple(data.get("lora", {}).get("target_modules", DEFAULT_TARGETS))}),
                encoder=EncoderSettings(**data.get("encoder", {})),
                output=OutputTransform(**data.get("output", {})),
                **{k: v for k, v in data.items() if k not in ("base", "lora", "encoder", "output")},
            )
        except (KeyError, TypeError) as err:
            raise ConfigError(f"hypernetwork config is malformed: {err}") from err

    def replace(self, **changes: Any) -> "HypernetConfig":
        return replace(self, **changes)
