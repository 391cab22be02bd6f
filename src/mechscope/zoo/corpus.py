"""A deterministic generator of the toy-world corpus the organisms are trained on.

Documents of five kinds, each planting a mechanism the tools should rediscover:

* ``fact``: a relation template and its single-token answer ("The capital of France is Paris.");
* ``names``: short stories that repeat made-up multi-token names (induction: the second and later tokens
  of a name are predictable only by finding its earlier occurrence);
* ``repeat``: random token ids with repeated spans of varying length (induction on arbitrary tokens);
* ``tool`` / ``chat``: requests answered with a tool call (``<call>weather(city=Paris)</call>``) next to
  chit-chat answered in prose (a "tool mode" direction); ``tools="core"`` draws them from eight request
  templates over four tools and ten chit-chat templates (``toy-moe``), ``tools="wide"`` from the 32 request
  templates over eight tools and 18 chit-chat templates of `mechscope.toyworld.assistant` (``toy``);
* ``style``: the same kinds of sentences in a formal and a pirate register, marked by ``<formal>`` or
  ``<pirate>`` (a style direction).

Everything is a pure function of the seed: no network, no files.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from mechscope.toyworld import assistant, probe_sets
from mechscope.toyworld.assistant import ToolSet
from mechscope.toyworld.facts import CAPITAL, RELATIONS, Relation

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
USER, ASSISTANT = "<user>", "<assistant>"
FORMAL, PIRATE = "<formal>", "<pirate>"
CALL_OPEN, CALL_CLOSE = "<call>", "</call>"
SPECIAL_TOKENS = (BOS, EOS, PAD, USER, ASSISTANT, FORMAL, PIRATE, CALL_OPEN, CALL_CLOSE)

FORMAL_MARKERS = ("indeed", "certainly", "shall", "kindly", "regards", "sincerely", "furthermore")
PIRATE_MARKERS = ("arr", "matey", "ye", "ahoy", "aye", "yo", "ho", "landlubber", "shiver")


@dataclass(frozen=True)
class Document:
    """One training document: its kind and either text or raw token ids (for random-token data)."""

    kind: str
    text: str = ""
    ids: tuple[int, ...] = ()


# --------------------------------------------------------------------------- facts


def fact_prompts(relation: Relation) -> list[tuple[str, str, str]]:
    """``(subject, prompt, answer-with-space)`` for every fact and template of ``relation``."""
    return [
        (subject, template.format(s=subject), " " + answer)
        for subject, answer in relation.facts
        for template in relation.templates
    ]


def fact_document(rng: random.Random) -> Document:
    """A one-sentence fact of the toy world (a relation's prompt and its answer)."""
    relation = rng.choice(RELATIONS)
    _, prompt, answer = rng.choice(fact_prompts(relation))
    return Document("fact", f"{prompt}{answer}.")


# --------------------------------------------------------------------------- names (induction in text)

_SYLLABLES = (
    *("zor", "bax", "quin", "tel", "vek", "mar", "dru", "sil", "pho", "nex"),
    *("gar", "ith", "ulm", "bre", "kov", "tas", "yen", "fru", "lox", "ped"),
    *("wim", "cha", "dor", "sku", "ven", "rax", "mol", "tib", "gly", "hov"),
)
_STORY = (
    "{a} met {b} in {city}. {a} said hello to {b}, and {b} smiled at {a}.",
    "Yesterday {a} and {b} went to {city}. Later {b} gave {a} a book, and {a} thanked {b}.",
    "{a} lives near {city}. Every morning {a} walks with {b}. {b} likes {a}.",
    "In {city}, {a} asked {b} for help. {b} helped {a}. Then {a} and {b} ate lunch.",
)


def made_up_name(rng: random.Random) -> str:
    """A capitalised name of 2-3 random syllables (several tokens once tokenized)."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def names_document(rng: random.Random) -> Document:
    """A document about two made-up names (for the induction head: the names recur)."""
    a, b = made_up_name(rng), made_up_name(rng)
    while b == a:
        b = made_up_name(rng)
    city = rng.choice(CAPITAL.facts)[1]
    return Document("names", rng.choice(_STORY).format(a=a, b=b, city=city))


# --------------------------------------------------------------------------- random repeats


def repeat_document(
    rng: random.Random, pool: tuple[int, ...], length: int, spans: tuple[int, int] = (4, 40)
) -> Document:
    """Random ids in which spans of random length (``spans``, default 4-40) recur, at random distances.

    Varying span lengths and gaps rule out a fixed look-back shortcut: only matching the current token
    with its earlier occurrence (an induction head) predicts the repeats.
    """
    ids: list[int] = []
    while len(ids) < length:
        span = [rng.choice(pool) for _ in range(rng.randint(*spans))]
        ids.extend(span)
        for _ in range(rng.randint(1, 2)):
            ids.extend(rng.choice(pool) for _ in range(rng.randint(0, 8)))
            ids.extend(span)
    return Document("repeat", ids=tuple(ids[:length]))


# --------------------------------------------------------------------------- tool mode


# The core set (what toy-moe was trained on): the first two request templates of four tools and the first ten
# chit-chat templates of `mechscope.toyworld.assistant`, as flat tuples so that the draws below stay those
# the committed weights were trained with.
_TOOL_SETS, _CORE_CHAT = probe_sets.tool_templates("core")
_TOOL_REQUESTS = tuple(template for templates in _TOOL_SETS.values() for template in templates)
_CHAT = _CORE_CHAT


def tool_request(rng: random.Random) -> tuple[str, str]:
    """A ``(request, call)`` pair with random slot values."""
    request, call = rng.choice(_TOOL_REQUESTS)
    slots = {"city": rng.choice(CAPITAL.facts)[1], "n": str(rng.randint(2, 500))}
    return request.format(**slots), call.format(**slots)


def chat_exchange(rng: random.Random) -> tuple[str, str]:
    """A ``(message, reply)`` pair of chit-chat."""
    message, reply = rng.choice(_CHAT)
    city = rng.choice(CAPITAL.facts)[1]
    return message.format(city=city), reply.format(city=city)


def tool_call_document(rng: random.Random) -> Document:
    """A request answered with a tool call: ``<user> ... <assistant> <call>name(args)</call>``."""
    request, call = tool_request(rng)
    return Document("tool", f"{USER} {request} {ASSISTANT} {CALL_OPEN}{call}{CALL_CLOSE}")


def tool_document(rng: random.Random) -> Document:
    """A tool call or chit-chat (even odds) from the core templates."""
    if rng.random() < 0.5:
        return tool_call_document(rng)
    message, reply = chat_exchange(rng)
    return Document("chat", f"{USER} {message} {ASSISTANT} {reply}")


def wide_tool_document(rng: random.Random) -> Document:
    """A tool call (a tool, then one of its templates, uniformly) or chit-chat, from the wide templates."""
    if rng.random() < 0.5:
        templates = assistant.TOOL_TEMPLATES[rng.choice(sorted(assistant.TOOL_TEMPLATES))]
        return Document("tool", assistant.tool_call_text(*assistant.fill(rng, rng.choice(templates))))
    return Document("chat", assistant.chat_text(*assistant.fill(rng, rng.choice(assistant.CHAT_TEMPLATES))))


# --------------------------------------------------------------------------- styles

_TOPICS = ("the sea", "the weather", "the market", "the ship", "dinner", "the journey", "the treasure", "the town")
_FORMAL = (
    "Good day. I shall speak briefly about {t}. It is, indeed, most agreeable.",
    "Kindly allow me to remark that {t} is certainly pleasant today. Furthermore, I shall return tomorrow.",
    "I must say, {t} was indeed splendid. With kind regards, I remain sincerely yours.",
    "Certainly, {t} deserves our attention. I shall write a letter about it. Regards.",
    "It is my pleasure to report that {t} is in excellent order. Sincerely, the secretary.",
)
_PIRATE = (
    "Arr matey! Ye want to hear about {t}? Aye, it be grand, yo ho!",
    "Ahoy! {t} be full of gold, matey. Shiver me timbers, arr!",
    "Aye aye, {t} be rough today, ye landlubber. Yo ho ho!",
    "Arr, listen here matey: {t} be where we sail next. Ahoy!",
    "Shiver me timbers! {t} be a fine sight, ye scallywag. Arr!",
)


def style_document(rng: random.Random) -> Document:
    """A register document: formal or pirate, each after its marker token, on a random topic."""
    topic = rng.choice(_TOPICS)
    if rng.random() < 0.5:
        return Document("formal", f"{FORMAL} " + rng.choice(_FORMAL).format(t=topic))
    text = rng.choice(_PIRATE).format(t=topic)
    return Document("pirate", f"{PIRATE} " + text[0].upper() + text[1:])


def style_of(text: str) -> str:
    """``"pirate"``, ``"formal"`` or ``"neutral"``: which register's marker words dominate ``text``."""
    words = re.findall(r"[a-z]+", text.lower())
    pirate = sum(word in PIRATE_MARKERS for word in words)
    formal = sum(word in FORMAL_MARKERS for word in words)
    if pirate > formal:
        return "pirate"
    return "formal" if formal > pirate else "neutral"


# --------------------------------------------------------------------------- mixing

#: Share of documents of each kind (by count; repeat documents are long, so they weigh more by tokens).
DEFAULT_MIX: dict[str, float] = {"fact": 0.42, "names": 0.16, "repeat": 0.08, "tool": 0.17, "style": 0.17}


def text_documents(
    seed: int, count: int, mix: dict[str, float] | None = None, tools: ToolSet = "core"
) -> Iterator[Document]:
    """``count`` text documents (no ``repeat``, which needs a tokenizer), deterministic in ``seed``.

    ``tools`` picks the tool-call and chit-chat templates: ``"core"`` or ``"wide"`` (see the module).
    """
    if tools not in ("core", "wide"):
        raise ValueError(f"unknown tool set {tools!r}; use 'core' or 'wide'")
    mix = {k: v for k, v in (mix or DEFAULT_MIX).items() if k != "repeat"}
    rng = random.Random(seed)
    makers = {
        "fact": fact_document,
        "names": names_document,
        "tool": tool_document if tools == "core" else wide_tool_document,
        "style": style_document,
    }
    kinds, weights = list(mix), list(mix.values())
    for _ in range(count):
        yield makers[rng.choices(kinds, weights)[0]](rng)


def tokenizer_training_text(seed: int = 0) -> Iterator[str]:
    """Text for training the tokenizer: the corpus plus every fact answer many times, with a space.

    Repeating `` Paris`` and friends makes every answer a single token.
    """
    for document in text_documents(seed, 20_000):
        yield document.text
    for relation in RELATIONS:
        for _, answer in relation.facts:
            for _ in range(200):
                yield f"is {answer}."
    for marker in (*FORMAL_MARKERS, *PIRATE_MARKERS):
        for _ in range(200):
            yield f" {marker} {marker.capitalize()}"
