"""Supervised records for training: reading JSONL and turning examples into token ids.

A record is `{"task": name, "descriptions": [...], "input": text | "messages": [...],
"output": text}`. The prompt is the chat template applied to the user turn (or to
the given messages); the loss is on the completion only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import T2LError
from ..jsonl import read_jsonl

IGNORE = -100


class TrainingDataError(T2LError):
    """A training file that cannot be used, with the file, line and problem."""


@dataclass(frozen=True)
class SFTRecord:
    task: str
    descriptions: tuple[str, ...]
    messages: tuple[dict[str, str], ...]
    output: str


def load_sft_records(path: str | Path) -> list[SFTRecord]:
    """Reads and checks a JSONL file; every problem names the file and line (`path:line`)."""
    records = []
    for where, doc in read_jsonl(path, TrainingDataError):

        def fail(problem: str) -> TrainingDataError:
            return TrainingDataError(f"{where}: {problem}")

        if not isinstance(doc, dict):
            raise fail("a record must be a JSON object.")
        if not isinstance(doc.get("task"), str) or not doc["task"]:
            raise fail("`task` (a non-empty string) is missing.")
        descriptions = doc.get("descriptions")
        if not isinstance(descriptions, list) or not descriptions or not all(isinstance(d, str) and d.strip() for d in descriptions):
            raise fail("`descriptions` must be a non-empty list of non-empty strings.")
        if not isinstance(doc.get("output"), str):
            raise fail("`output` (a string) is missing.")
        if "messages" in doc:
            messages = doc["messages"]
            if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
            ):
                raise fail("`messages` must be a non-empty list of {role, content} strings.")
        elif isinstance(doc.get("input"), str):
            messages = [{"role": "user", "content": doc["input"]}]
        else:
            raise fail("give the prompt as `input` (a string) or `messages`.")
        records.append(SFTRecord(doc["task"], tuple(descriptions), tuple(messages), doc["output"]))
    return records


def encode_example(tokenizer: Any, record: SFTRecord, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (prompt masked with -100), truncated to `max_length`."""
    prompt = tokenizer.apply_chat_template(list(record.messages), tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    answer_ids = tokenizer(record.output, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    return ids, labels


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels for a batch."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for n, (ids, labs) in enumerate(examples):
        input_ids[n, : len(ids)] = torch.tensor(ids)
        labels[n, : len(labs)] = torch.tensor(labs)
        mask[n, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
