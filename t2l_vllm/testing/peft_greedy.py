"""The reference side of every vLLM comparison: greedy ids from transformers + PEFT, float32."""

from __future__ import annotations

from pathlib import Path


def peft_greedy(model_dir: str | Path, prompt: str, max_tokens: int, adapter_dir: str | Path | None = None) -> list[int]:
    """Greedy token ids after `prompt`, with the PEFT adapter folder applied if one is given.

    Never stops at EOS, like vLLM with `ignore_eos`, so both sides emit `max_tokens` ids.
    Attention is transformers' eager implementation, the only one that applies
    Gemma-2's attention soft cap (SDPA leaves it out).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_token_id
        )
    return out[0, ids.shape[1] :].tolist()
