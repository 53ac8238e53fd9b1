"""The demo's prompts on the embedded default, and their check against the toy tasks' exact outputs.

`t2l-vllm demo` shows these when it runs on the embedded default (no `--model`,
no `--hypernet`): descriptions the hypernetwork was trained on, descriptions it
never saw, two written for the demo, and tasks held out of its training.
"""

from __future__ import annotations

from .world import TASKS

# (description, query, the toy task that answers it, what the demo shows with it)
TOY_PROMPTS = [
    ("Convert the text to uppercase.", "hello world", "uppercase", "a description seen in training"),
    ("Sort the words alphabetically.", "pear apple fig", "sort_words", "a description seen in training"),
    ("Capital letters everywhere, please.", "good day", "uppercase", "a held-out description"),
    ("Spell the whole input backwards, last character first.", "stressed", "reverse", "a description written for the demo"),
    ("Join the first letters of all the words into one word.", "text to lora", "first_letters", "a description written for the demo"),
    ("Reduce the phrase word by word to the first 4 letters of each.", "hello wonderful world", "keep_first_4", "a task held out of training"),
    ("The first 5 letters of every word should become capitals.", "hello wonderful world", "upper_first_5", "a task held out of training"),
    ("Each letter goes 2 places forward in the alphabet, and the spaces do not change.", "hello world", "shift_forward_2",
     "a task held out of training"),
    ("Combine two steps: reverse the whole text character by character, and finally make every other letter of each "
     "word a capital, starting from the first.", "hello world", "reverse_then_alternate_case", "a task held out of training"),
    (None, "hello world", None, "no description: the base model"),
]


def expected_answer(task: str, query: str) -> str:
    """The toy task's exact output for `query`: what the demo checks an answer against."""
    return TASKS[task].fn(query)
