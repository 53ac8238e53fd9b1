"""Task encoders: descriptions to the vectors a hypernetwork reads, over sentence-transformers.

`task_encoder.py` is the encoder itself and its presets; `loading.py` finds and
loads the model, `repair.py` makes remote code of the transformers 4 era load
right under transformers 5, `identity.py` checks that the weights are the ones
a hypernetwork was trained with, and `self_check.py` refuses an encoder that
would embed every description alike.
"""

from .loading import load_sentence_transformer, quiet_hf_progress, resolve_model_path
from .task_encoder import (
    DEFAULT_ENCODER,
    ENCODER_PRESETS,
    GTE_LARGE,
    TaskEncoder,
    add_full_stop,
    check_reads,
    encoder_settings_for,
    load_task_encoder,
    top_layer_parameters,
    write_tuned_weights,
)

__all__ = [
    "DEFAULT_ENCODER", "ENCODER_PRESETS", "GTE_LARGE", "TaskEncoder", "add_full_stop", "check_reads", "encoder_settings_for",
    "load_sentence_transformer", "load_task_encoder", "quiet_hf_progress", "resolve_model_path", "top_layer_parameters", "write_tuned_weights",
]
