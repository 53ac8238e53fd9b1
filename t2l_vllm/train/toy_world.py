"""The toy world: synthetic text tasks with exact answers, small enough to train on a CPU.

Every task maps an input of 1 to 4 lowercase words (letters only, at most 24
characters with spaces) to an output computed exactly by a Python function, so
accuracy is exact match and needs no judge. Each task has 20+ descriptions
written for this project; the hypernetwork sees only descriptions, never the
task's name, so the names below are internal keys.

Split (fixed, so every run measures the same thing):

- 11 training tasks: reverse, uppercase, sort_words, reverse_each_word,
  alternate_case, first_word, first_letters, last_letters, count_words,
  word_lengths, sort_letters.
- 4 held-out tasks, each with close training neighbours (`HELDOUT_NEIGHBOURS`),
  so zero-shot generation has something to interpolate from:
  - reverse_words ~ reverse, reverse_each_word: reversing the characters is
    reversing the word order and then each word (reverse = reverse_each_word
    after reverse_words), and sort_words also reorders whole words. It is held
    out rather than trained because it is the named task with the clearest
    neighbours, the best test of the paper's zero-shot claim.
  - capitalize_words ~ uppercase, alternate_case (both raise letters to
    capitals; alternate_case also capitalises each word's first letter).
  - last_word ~ first_word, last_letters (same selection, other end / whole word).
  - count_vowels ~ count_words, word_lengths (counting, digits out).

Related pairs inside the training set: sort_words ~ sort_letters (alphabetical
order of words vs of letters), first_letters ~ last_letters.

Tasks are distinct: every pair of tasks gives different outputs on at least half
of random inputs (the tests check 500). The closest pair is sort_words vs
reverse_words (about 44% agreement: both return a single word unchanged, and
two words already in descending order come out the same); every other pair
agrees on about 26% or less, mostly single-word inputs (e.g. reverse vs
reverse_each_word, first_word vs last_word).
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

MAX_WORDS = 4
MAX_WORD_LETTERS = 8
MAX_INPUT_CHARS = 24
HELDOUT_DESCRIPTIONS = 5
VOWELS = frozenset("aeiou")


@dataclass(frozen=True)
class ToyTask:
    """A task: its internal name, the exact function that answers it, and its descriptions."""

    name: str
    fn: Callable[[str], str]
    descriptions: tuple[str, ...]


def _reverse(text: str) -> str:
    return text[::-1]


def _uppercase(text: str) -> str:
    return text.upper()


def _sort_words(text: str) -> str:
    return " ".join(sorted(text.split()))


def _reverse_words(text: str) -> str:
    return " ".join(reversed(text.split()))


def _reverse_each_word(text: str) -> str:
    return " ".join(word[::-1] for word in text.split())


def _capitalize_words(text: str) -> str:
    return " ".join(word[0].upper() + word[1:] for word in text.split())


def _alternate_case(text: str) -> str:
    """Capitals at even positions within each word: "hello world" -> "HeLlO WoRlD"."""
    return " ".join(
        "".join(c.upper() if i % 2 == 0 else c for i, c in enumerate(word)) for word in text.split()
    )


def _first_word(text: str) -> str:
    return text.split()[0]


def _last_word(text: str) -> str:
    return text.split()[-1]


def _first_letters(text: str) -> str:
    return "".join(word[0] for word in text.split())


def _last_letters(text: str) -> str:
    return "".join(word[-1] for word in text.split())


def _count_words(text: str) -> str:
    return str(len(text.split()))


def _count_vowels(text: str) -> str:
    return str(sum(c in VOWELS for c in text))


def _word_lengths(text: str) -> str:
    return " ".join(str(len(word)) for word in text.split())


def _sort_letters(text: str) -> str:
    return "".join(sorted(text.replace(" ", "")))


# Descriptions: the last HELDOUT_DESCRIPTIONS of each task are held out. Examples
# inside a description are written as exactly two double-quoted strings, input
# then output; the tests check each against the task's function.
_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "reverse": (
        "Reverse the text character by character.",
        "Write the input backwards, letter by letter, including the spaces.",
        "Spell the whole string from its last character to its first.",
        "Output the characters of the input in reverse order.",
        "Read the line from right to left and write down what you see.",
        "Can you flip this text so the final character comes first?",
        "Mirror the string: the last letter becomes the first and so on.",
        'Return the input string reversed, for example "ab cd" becomes "dc ba".',
        "Turn the text around completely, so it reads backwards.",
        "Produce the exact character-level reversal of the given phrase.",
        "Given a short phrase, output every character in the opposite order.",
        "Write it backwards.",
        "Please reverse the entire string, not just the word order.",
        "What does this text look like when read from the end to the start?",
        "Invert the order of all characters, spaces included.",
        "Backwards spelling of the full input, please.",
        "Take the input and emit its characters from last to first.",
        "Flip the whole line end to end, like holding it up to a mirror.",
        'Reverse everything: "hello world" turns into "dlrow olleh".',
        "Your job is to undo the reading direction: print the text right to left.",
        "Formally, map a string to the sequence of its characters taken in reverse.",
        "Just spit the text out backwards.",
    ),
    "uppercase": (
        "Convert the text to uppercase.",
        "Make every letter a capital letter.",
        "Write the input in all caps.",
        "Change each lowercase letter into its upper-case form.",
        "Shout it: rewrite the phrase in capital letters only.",
        "Return the same text with every single letter in upper case.",
        "Could you put this whole string in block capitals?",
        'Uppercase the entire input, e.g. "good day" becomes "GOOD DAY".',
        "Transform all characters to their upper-case equivalents, leaving spaces alone.",
        "Rewrite this in ALL CAPS.",
        "Switch the text from lower case to upper case throughout.",
        "Capitalize every letter, not only the first one of each word.",
        "Print the input as if caps lock were on.",
        "Raise the case of each letter to upper.",
        "Produce an upper-case version of the given words.",
        "What is this phrase in capital letters?",
        "Make it all big letters.",
        'Turn on caps for the whole thing: "abc" gives "ABC".',
        "Output the text with every letter converted to a majuscule.",
        "Please write each word entirely in capitals.",
        "Keep the words and their order, but make all of their letters upper case.",
        "Capital letters everywhere, please.",
    ),
    "sort_words": (
        "Sort the words alphabetically.",
        "Put the words in alphabetical order.",
        "Arrange the words from A to Z.",
        "Rearrange the words so they follow dictionary order.",
        "List the same words, ordered as they would appear in a dictionary.",
        "Can you alphabetize these words?",
        "Order the words lexicographically and join them with single spaces.",
        'Sort the words, e.g. "pear apple" becomes "apple pear".',
        "Reorder the words of the phrase alphabetically, keeping each word intact.",
        "Alphabetize the word list.",
        "Which order do these words take when sorted from a to z?",
        "Put the words in ascending alphabetical order, leaving their spelling unchanged.",
        "Rank the words by spelling, earliest in the alphabet first.",
        "Shuffle the words into A-to-Z order.",
        "Sort by word, not by letter, in alphabetical order.",
        "Arrange the given words as they would be listed in an index.",
        "Give me the words sorted alphabetically.",
        'Word sort: "dog cat bee" gives "bee cat dog".',
        "Reorder the words so that each one comes alphabetically before the next.",
        "Put these words into dictionary sequence.",
        "Formally, output the multiset of words in ascending lexicographic order.",
        "Alphabetical order for the words, please.",
    ),
    "reverse_words": (
        "Reverse the order of the words.",
        "Write the words in the opposite order, keeping each word as it is.",
        "Put the last word first and the first word last.",
        "List the words from the end of the phrase to the beginning.",
        "Flip the word order but do not change the spelling of any word.",
        "Can you say these words backwards, word by word?",
        "Read the words from right to left, keeping each one spelled normally.",
        'Reverse the word sequence, e.g. "a b c" becomes "c b a".',
        "Output the same words in reverse sequence.",
        "Invert the order of the words in the phrase.",
        "Rearrange the words so the final one leads and the first one trails.",
        "Backwards word order, please.",
        "Turn the sentence around at the level of words, not letters.",
        "Give the words in reverse, but keep the letters within each word unchanged.",
        "What do you get if you list these words starting from the last one?",
        "Swap the word order end to end.",
        "Emit the words last to first, separated by single spaces.",
        'Word-level reversal: "red green blue" turns into "blue green red".',
        "Mirror the order of the words while leaving each word untouched.",
        "Start with the final word and work back to the first.",
        "Formally, output the input's words in descending positional order.",
        "Just flip the words around.",
    ),
    "reverse_each_word": (
        "Reverse each word in place.",
        "Spell every word backwards but keep the words in their original order.",
        "Flip the letters inside each word, leaving the word order unchanged.",
        "Write each word from its last letter to its first.",
        "Mirror every word separately, without moving any word.",
        "Can you reverse the letters of every word individually?",
        "Keep the words where they are, but turn each one around.",
        'Reverse the spelling of each word, e.g. "hello world" becomes "olleh dlrow".',
        "Apply a backwards spelling to each word on its own.",
        "Within each word, put the letters in reverse order.",
        "Every word should be spelled backwards; the order of the words stays the same.",
        "Word by word, reverse the characters.",
        "Turn each word inside out: letter order reversed, positions kept.",
        "Output the phrase with the letters of each word flipped.",
        "What does each word look like spelled right to left, words staying in place?",
        "Reverse letters per word, not the whole sentence.",
        "Backwards spelling for each separate word, in the original word order.",
        'Flip every word: "abc de" gives "cba ed".',
        "Read each word backwards and write them in the same sequence.",
        "Invert the letter order within every individual word.",
        "Formally, map each word to its reversal and keep the positions of the words.",
        "Spell each word back to front.",
    ),
    "capitalize_words": (
        "Capitalize the first letter of each word.",
        "Make every word start with a capital letter.",
        "Write the phrase in title case.",
        "Give each word an initial capital and keep the remaining letters lowercase.",
        "Turn the first letter of every word into a capital.",
        "Can you put this into title case?",
        'Capitalize each word\'s initial, e.g. "new york" becomes "New York".',
        "Make only the first letter of every word upper case.",
        "Start every word with a capital, leaving the rest small.",
        "Format the words like a book title, each one beginning with a capital.",
        "Capital letter at the start of each word, please.",
        "Convert the text to title case without changing anything else.",
        "Raise the first character of each word to upper case.",
        "Make the words look like proper names by capitalizing their first letters.",
        "Which version of this phrase has each word starting with a capital?",
        "Only the leading letter of every word should become a capital.",
        "Title-case the input.",
        'Capitalize words: "big red dog" turns into "Big Red Dog".',
        "Give each word a capital first letter and leave the other letters as they are.",
        "Rewrite the text so that the initial letter of every word is upper case.",
        "Formally, map each word to itself with its first character upper-cased.",
        "Just capitalize the start of each word.",
    ),
    "alternate_case": (
        "Alternate the case of the letters in each word, starting with a capital.",
        "Write each word in alternating caps, beginning with an upper-case letter.",
        "Make every other letter of each word a capital, starting from the first.",
        "Use alternating case within each word: capital, small, capital, small.",
        "Capitalize the first, third, fifth and so on letters of every word.",
        "Can you write this in alternating capitals, restarting at each word?",
        'Alternate caps per word, e.g. "hello world" becomes "HeLlO WoRlD".',
        "Switch between capital and lowercase letters inside each word, beginning with a capital.",
        "Produce zigzag casing for every word, first letter big.",
        "Counting from one, letters at odd positions in each word are capitals and the others stay small.",
        "Give the words a sarcastic alternating-caps look, each word starting in upper case.",
        "Alternate between upper and lower case letter by letter, starting over with a capital at each new word.",
        "Apply an up, down, up, down pattern of case to the letters of every word.",
        "What does each word look like with every second letter capitalized, starting from the first?",
        "Mock-case the text: big, small, big, small within each word.",
        "Put letters one, three, five and so on of each word in capitals and leave the others small.",
        "Alternating capitals in every word, please, leading with a capital.",
        'Alternate the case: "abc de" gives "AbC De".',
        "Turn each word into alternating case, the first letter a capital and the next one small.",
        "Capitalize every second letter of each word, counting from its first letter.",
        "Formally, upper-case the characters at even zero-based indices within each word.",
        "Do the alternating caps thing on each word.",
    ),
    "first_word": (
        "Return only the first word.",
        "Output the first word of the phrase and nothing else.",
        "Keep the opening word and drop the rest.",
        "What is the first word?",
        "Give me just the word the text starts with.",
        "Extract the leading word.",
        "Print the initial word of the input.",
        'Take the first word, e.g. "green tea cup" gives "green".',
        "Delete every word except the first one.",
        "Which word comes first in this phrase?",
        "Copy out the word at the start of the text.",
        "Return the word that appears before all the others.",
        "Only the first word, please.",
        "Truncate the phrase after its first word.",
        "Select the word in the first position.",
        "Give the earliest word in the input and discard what follows.",
        "Answer with the opening word of the phrase.",
        'First word only: "run fast now" becomes "run".',
        "Cut away everything from the first space onwards.",
        "Report the word that the input begins with.",
        "Formally, output the word at index zero of the whitespace-separated input.",
        "Just the first word.",
    ),
    "last_word": (
        "Return only the last word.",
        "Output the final word of the phrase and nothing else.",
        "Keep the closing word and drop the rest.",
        "What is the last word?",
        "Give me just the word the text ends with.",
        "Extract the trailing word.",
        "Print the final word of the input.",
        'Take the last word, e.g. "green tea cup" gives "cup".',
        "Delete every word except the last one.",
        "Which word comes last in this phrase?",
        "Copy out the word at the very end of the text.",
        "Return the word that appears after all the others.",
        "Only the final word, please.",
        "Drop everything before the last word.",
        "Select the word in the final position.",
        "Give the latest word in the input and discard what precedes it.",
        "Answer with the concluding word of the phrase.",
        'Last word only: "run fast now" becomes "now".',
        "Cut away everything up to and including the last space.",
        "Report the word that the input finishes on.",
        "Formally, output the final element of the whitespace-separated input.",
        "Just the last word.",
    ),
    "first_letters": (
        "Write the first letter of each word, joined together.",
        "Make an acronym from the words, in lowercase.",
        "Take the initial letter of every word and concatenate them.",
        "Output the initials of the words with no spaces.",
        "What are the first letters of the words?",
        "Form a word from the opening letter of each word.",
        "Collect the first character of each word into one string.",
        'Join the initials, e.g. "hello world foo" becomes "hwf".',
        "Abbreviate the phrase to the first letter of every word.",
        "Keep only the leading letter of each word and squeeze them together.",
        "Spell out the initials of this phrase.",
        "Give the lowercase acronym of the input.",
        "Each word contributes its first letter; print them in order without spaces.",
        "Drop everything but the start of each word, then remove the spaces.",
        "Can you build the initialism of these words?",
        "Concatenate the beginning letters of all the words.",
        "Initials only, please, all run together.",
        'Acronym: "big red dog" gives "brd".',
        "String together the first letter from every word, in order.",
        "Read down the first column of the words and write those letters.",
        "Formally, output the concatenation of the first character of each word.",
        "Just the initials.",
    ),
    "last_letters": (
        "Write the last letter of each word, joined together.",
        "Take the final letter of every word and concatenate them.",
        "Output the ending letters of the words with no spaces.",
        "What are the last letters of the words?",
        "Form a string from the closing letter of each word.",
        "Collect the final character of each word into one string.",
        'Join the final letters, e.g. "hello world foo" becomes "odo".',
        "Keep only the trailing letter of each word and squeeze them together.",
        "Each word contributes its last letter; print them in order without spaces.",
        "Drop everything but the end of each word, then remove the spaces.",
        "Can you list the letter that each word ends with, run together?",
        "Concatenate the ending letters of all the words.",
        "Gather the terminal letter of every word, keeping the word order.",
        "Which letters do the words finish with? Write them as one string.",
        "Make a kind of acronym out of the final letters of the words.",
        "Last letters only, please, all run together.",
        "Pull the final character from each word and join them.",
        'Word endings: "big red dog" gives "gdg".',
        "String together the last letter from every word, in order.",
        "For every word, keep its final letter; output those letters with no gaps.",
        "Formally, output the concatenation of the last character of each word.",
        "Just the last letter of each word.",
    ),
    "count_words": (
        "Count the words.",
        "How many words are there?",
        "Return the number of words as a digit.",
        "Output how many words the input contains.",
        "Give the word count.",
        "Tell me the number of space-separated words.",
        "Count how many words appear in the phrase and write the number.",
        'Count the words, e.g. "a bb ccc" gives "3".',
        "What is the total number of words in this text?",
        "Answer with a single digit: the number of words.",
        "Determine the word count of the input.",
        "Tally the words and print the total.",
        "Say how many separate words you see.",
        "Report the length of the phrase measured in words, not letters.",
        "Number of words, please.",
        "How long is this, counted in words?",
        "Compute how many words are in the given text.",
        'Word count: "sun moon" becomes "2".',
        "Write down how many words the line has.",
        "Count words, not characters, and give the number.",
        "Formally, output the cardinality of the list of whitespace-separated tokens.",
        "How many words?",
    ),
    "count_vowels": (
        "Count the vowels.",
        "How many vowels does the text contain?",
        "Return the number of vowels, counting a, e, i, o and u.",
        "Output how many of the letters are vowels.",
        "Give the vowel count of the phrase.",
        "Tally every a, e, i, o and u and print the total.",
        "Count the vowel letters across all the words.",
        'Count vowels, e.g. "hello world" gives "3".',
        "What is the total number of vowels in this input?",
        "Answer with a number: how many vowels appear?",
        "Determine how many vowels the words have altogether.",
        "Say how many times a vowel occurs, repeats included.",
        "Report the number of vowel characters, treating y as a consonant.",
        "Number of vowels, please.",
        "How many of the characters are a, e, i, o or u?",
        "Compute the count of vowels in the given text.",
        "Go through the letters and count the vowels.",
        'Vowel count: "banana" becomes "3".',
        "Write down how many vowels the line has.",
        "Count vowels, not words, and give the number.",
        "Formally, output how many characters of the input belong to the set of a, e, i, o, u.",
        "How many vowels?",
    ),
    "word_lengths": (
        "Give the length of each word.",
        "Write how many letters each word has, separated by spaces.",
        "Replace every word with its number of letters.",
        "Output the word lengths in order.",
        "How long is each word?",
        "List the letter count of every word, one number per word.",
        "Measure each word and write the measurements separated by spaces.",
        'Word lengths, e.g. "hello my friend" gives "5 2 6".',
        "For each word, print how many characters it contains.",
        "Swap each word for a number telling how long it is.",
        "What are the lengths of the words, from first to last?",
        "Count the letters in every word separately.",
        "Give a space-separated list of the sizes of the words.",
        "Turn the phrase into numbers: one per word, equal to its length.",
        "Letter counts per word, please.",
        "Report how many letters make up each of the words.",
        "Describe each word only by its length.",
        'Lengths: "ab cde f" becomes "2 3 1".',
        "Write the number of letters of each word in the original order.",
        "Measure every word in letters and list the results.",
        "Formally, map each word to its length written in decimal.",
        "How many letters in each word?",
    ),
    "sort_letters": (
        "Sort all the letters alphabetically.",
        "Put every letter of the input in alphabetical order and drop the spaces.",
        "Arrange the characters from a to z, ignoring word boundaries.",
        "Alphabetize the letters of the whole phrase into one string.",
        "Rearrange all letters so they appear in dictionary order, with no spaces.",
        "Can you sort the letters, not the words, from a to z?",
        "Write the letters of the text in ascending alphabetical order.",
        'Sort the letters, e.g. "cab de" becomes "abcde".',
        "Gather every letter, remove the spaces, and order them alphabetically.",
        "Produce the sorted letters of the input, repeats kept.",
        "Which string do you get by ordering all the letters from a to z?",
        "Letter sort across the entire input, spaces removed.",
        "Line up all the letters alphabetically in a single run.",
        "Order the characters of the phrase alphabetically and squash them together.",
        "Alphabetical order for every letter, please, with duplicates kept.",
        "Take all the letters, throw away the spaces, and sort what is left.",
        "Rank the letters by their place in the alphabet and write them out.",
        'Sort letters: "dog cat" gives "acdgot".',
        "Make one word out of all the letters, arranged alphabetically.",
        "Combine the words into one block of letters in alphabetical order.",
        "Formally, output the characters of the input, excluding spaces, in ascending order.",
        "Just sort the letters.",
    ),
}

_FUNCTIONS: dict[str, Callable[[str], str]] = {
    "reverse": _reverse,
    "uppercase": _uppercase,
    "sort_words": _sort_words,
    "reverse_words": _reverse_words,
    "reverse_each_word": _reverse_each_word,
    "capitalize_words": _capitalize_words,
    "alternate_case": _alternate_case,
    "first_word": _first_word,
    "last_word": _last_word,
    "first_letters": _first_letters,
    "last_letters": _last_letters,
    "count_words": _count_words,
    "count_vowels": _count_vowels,
    "word_lengths": _word_lengths,
    "sort_letters": _sort_letters,
}

TASKS: dict[str, ToyTask] = {
    name: ToyTask(name=name, fn=fn, descriptions=_DESCRIPTIONS[name]) for name, fn in _FUNCTIONS.items()
}

HELDOUT_TASKS: tuple[str, ...] = ("reverse_words", "capitalize_words", "last_word", "count_vowels")
TRAIN_TASKS: tuple[str, ...] = tuple(name for name in TASKS if name not in HELDOUT_TASKS)

# The training tasks closest to each held-out task (see the module docstring).
HELDOUT_NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "reverse_words": ("reverse", "reverse_each_word", "sort_words"),
    "capitalize_words": ("uppercase", "alternate_case"),
    "last_word": ("first_word", "last_letters"),
    "count_vowels": ("count_words", "word_lengths"),
}


def random_input(rng: random.Random) -> str:
    """1 to 4 random lowercase words of 1 to 8 letters, at most 24 characters with spaces.

    Letters are uniform rather than drawn from a vocabulary, so a model cannot
    answer from memorised words and every task's output depends on the input.
    """
    n_words = rng.randint(1, MAX_WORDS)
    while True:
        lengths = [rng.randint(1, MAX_WORD_LETTERS) for _ in range(n_words)]
        if sum(lengths) + n_words - 1 <= MAX_INPUT_CHARS:
            break
    return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(n)) for n in lengths)


def split_descriptions(task: ToyTask, n_heldout: int = HELDOUT_DESCRIPTIONS) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(seen, held-out) descriptions: the last `n_heldout` are held out, fixed by position."""
    if not 0 < n_heldout < len(task.descriptions):
        raise ValueError(f"n_heldout must be between 1 and {len(task.descriptions) - 1}, got {n_heldout}")
    return task.descriptions[:-n_heldout], task.descriptions[-n_heldout:]


def make_examples(task_names: Iterable[str], n: int, seed: int) -> list[dict]:
    """`n` records per task, interleaved task by task so that any prefix is balanced.

    Each record carries the task's seen descriptions (the trainer picks one per
    step), the input, and the exact output. The same seed gives the same records.
    """
    tasks = [TASKS[name] for name in task_names]
    seen = {task.name: split_descriptions(task)[0] for task in tasks}
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        for task in tasks:
            text = random_input(rng)
            records.append(
                {"task": task.name, "descriptions": list(seen[task.name]), "input": text, "output": task.fn(text)}
            )
    return records


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Writes one JSON object a line, the format `t2l-vllm train sft` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
