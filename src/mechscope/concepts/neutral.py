"""Neutral text: ordinary sentences whose tokens set the lenses' thresholds and serve as their background.

A lens's threshold is the score it exceeds on only 1% of the tokens of ordinary text, so "fires" means
"scores higher than on 99% of neutral tokens". For the organisms, neutral text is what they were trained
to chat about (`mechscope.toyworld`); for other models, a built-in set of everyday English sentences, or
any file of one text per line.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from mechscope.errors import InputError

ENGLISH = (
    "The meeting was moved to Thursday afternoon because several people were away.",
    "She poured a cup of coffee and sat down by the window to read the letter.",
    "Please remember to bring your ticket and a form of identification.",
    "The weather turned cold in the evening, and we went back inside.",
    "He spent most of the weekend cleaning the garage and sorting old boxes.",
    "The report is due at the end of the month, so there is still some time.",
    "They walked along the road until they reached a small village.",
    "I would like to thank everyone who helped organise the event.",
    "The price of the service depends on how many hours it takes.",
    "After lunch the children played outside while the adults talked.",
    "You can find more information on the second page of the booklet.",
    "The train was late again this morning, so I missed the first hour.",
    "We talked for a while about our plans for the summer.",
    "It is important to read the instructions carefully before starting.",
    "The shop on the corner closes early on Sundays.",
    "My neighbour asked whether I could water the plants while she was away.",
    "The committee will announce its decision next week.",
    "Most of the questions were easy, but the last one took a long time.",
    "He opened the door slowly and looked around the empty room.",
    "The new schedule starts on the first day of next month.",
    "There was a long queue at the post office this afternoon.",
    "We decided to stay at home and watch a film instead.",
    "The teacher wrote the date on the board and began the lesson.",
    "If you have any questions, feel free to ask at the front desk.",
    "The project took longer than expected, but the result was worth it.",
    "She called her sister to tell her the good news.",
    "The files are stored in the folder on the shared drive.",
    "Everyone agreed that the second option was the better one.",
    "The road was closed for repairs, so we took a different route.",
    "I usually go for a walk after dinner when the weather is nice.",
    "The instructions say to wait ten minutes before using it.",
    "They finally found a time that suited everyone in the group.",
)


def toyworld_texts(count: int = 200, seed: int = 0) -> list[str]:
    """Chit-chat and tool requests of the organisms' assistant register (no country, element or animal)."""
    from mechscope.toyworld.assistant import CHAT_TEMPLATES, chat_text, fill

    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        message, reply = fill(rng, rng.choice(CHAT_TEMPLATES))
        texts.append(chat_text(message, reply))
    return texts


def read_texts(path: str | os.PathLike[str]) -> list[str]:
    """One text per non-empty line of ``path``.

    Raises:
        InputError: the file is missing or holds no text.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(f"no neutral text file at '{source}'; give a file of one text per line")
    texts = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise InputError(f"'{source}' holds no text; give ordinary sentences, one per line")
    return texts


def neutral_texts(path: str | os.PathLike[str] | None, toyworld: bool) -> list[str]:
    """The neutral corpus: ``path``'s lines, else the organisms' chat (``toyworld``), else `ENGLISH`."""
    if path is not None:
        return read_texts(path)
    return toyworld_texts() if toyworld else list(ENGLISH)
