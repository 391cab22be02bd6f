"""The assistant's wording: requests answered with a tool call, chit-chat answered in prose.

Eight tools, each with four request templates (``(request, call)``), and eighteen chit-chat templates
(``(message, reply)``), with slots filled from small value lists. The ``toy`` organism is trained on all of
them (``tools="wide"`` in its recipe, `mechscope.zoo.corpus`); ``toy-moe`` predates them and knows only the
first two templates of the first four tools and the first ten chit-chat templates (``tools="core"``).

A probe that should find "tool mode" must be tested on templates it was not trained on: which templates a
probe sees is the probing dataset's business (`mechscope.probing.dataset.split_by_template`).

>>> import random
>>> request, call = fill(random.Random(0), TOOL_TEMPLATES["weather"][0])
>>> request, call
("What's the weather in Hanoi?", 'weather(city=Hanoi)')
"""

from __future__ import annotations

import random
from typing import Literal

#: Which templates an organism was trained on: ``"core"`` (toy-moe) or ``"wide"`` (toy).
ToolSet = Literal["core", "wide"]

USER, ASSISTANT = "<user>", "<assistant>"
CALL_OPEN, CALL_CLOSE = "<call>", "</call>"

# Slot values. Cities are capitals of the toy world (`mechscope.toyworld.facts.CAPITAL`).
CITIES = (
    *("Paris", "Berlin", "Rome", "Madrid", "Lisbon", "Tokyo", "Beijing", "Moscow", "Cairo", "Nairobi"),
    *("Ottawa", "Lima", "Havana", "Athens", "Vienna", "Budapest", "Warsaw", "Oslo", "Stockholm", "Helsinki"),
    *("Dublin", "Brussels", "Amsterdam", "Bern", "Ankara", "Delhi", "Bangkok", "Hanoi", "Seoul", "Jakarta"),
)
NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hugo", "Ida", "Jonas")
LANGUAGES = ("French", "German", "Spanish", "Italian", "Japanese")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TOPICS = ("the sea", "the weather", "the market", "the ship", "dinner", "the journey", "the town", "the garden")
# What an email or a reminder is about: its own words, so that the chit-chat topics are no cue for a tool.
SUBJECTS = ("the meeting", "the report", "the invoice", "the trip", "the party", "the rent", "the tickets")
WORDS = ("hello", "thank you", "good night", "the train", "a cup of tea", "my friend")

Template = tuple[str, str]

#: tool -> ``(request, call)`` templates.
TOOL_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "weather": (
        ("What's the weather in {city}?", "weather(city={city})"),
        ("Will it rain in {city} tomorrow?", "weather(city={city})"),
        ("Is it cold in {city} right now?", "weather(city={city})"),
        ("Do I need an umbrella in {city} on {day}?", "weather(city={city}, day={day})"),
    ),
    "time": (
        ("What time is it in {city}?", "time(city={city})"),
        ("Tell me the local time in {city}.", "time(city={city})"),
        ("Is it morning or evening in {city} now?", "time(city={city})"),
        ("Which hour is it in {city} at the moment?", "time(city={city})"),
    ),
    "convert": (
        ("How much is {n} euros in dollars?", "convert(amount={n}, unit=EUR, to=USD)"),
        ("Convert {n} dollars to euros.", "convert(amount={n}, unit=USD, to=EUR)"),
        ("What are {n} pounds worth in euros?", "convert(amount={n}, unit=GBP, to=EUR)"),
        ("Change {n} yen into dollars for me.", "convert(amount={n}, unit=JPY, to=USD)"),
    ),
    "search": (
        ("Find flights to {city}.", "search(query=flights {city})"),
        ("Look up hotels in {city}.", "search(query=hotels {city})"),
        ("Search for restaurants in {city}.", "search(query=restaurants {city})"),
        ("Show me museums near {city}.", "search(query=museums {city})"),
    ),
    "calendar": (
        ("Add a meeting with {name} on {day}.", "calendar(event=meeting {name}, day={day})"),
        ("Put lunch with {name} in my calendar for {day}.", "calendar(event=lunch {name}, day={day})"),
        ("What is on my calendar for {day}?", "calendar(day={day})"),
        ("Book a call with {name} for {day}.", "calendar(event=call {name}, day={day})"),
    ),
    "email": (
        ("Send an email to {name} about {subject}.", "email(to={name}, subject={subject})"),
        ("Email {name} that I will be late.", "email(to={name}, subject=late)"),
        ("Write to {name} and ask about {subject}.", "email(to={name}, subject={subject})"),
        ("Mail {name} the notes on {subject}.", "email(to={name}, subject={subject})"),
    ),
    "translate": (
        ("Translate {word} into {lang}.", "translate(text={word}, to={lang})"),
        ("How do you say {word} in {lang}?", "translate(text={word}, to={lang})"),
        ("What is {word} in {lang}?", "translate(text={word}, to={lang})"),
        ("Say {word} in {lang} for me.", "translate(text={word}, to={lang})"),
    ),
    "reminder": (
        ("Remind me to call {name} on {day}.", "reminder(task=call {name}, day={day})"),
        ("Set a reminder for {day} to pay the rent.", "reminder(task=rent, day={day})"),
        ("Remind me about {subject} on {day}.", "reminder(task={subject}, day={day})"),
        ("Do not let me forget {name} on {day}.", "reminder(task={name}, day={day})"),
    ),
}

#: ``(message, reply)`` chit-chat templates.
CHAT_TEMPLATES: tuple[Template, ...] = (
    ("How are you today?", "I am fine, thank you for asking."),
    ("Tell me a joke.", "Why did the cat sit on the computer? To keep an eye on the mouse."),
    ("What is your favourite colour?", "I like blue, like the sky over the sea."),
    ("Good morning!", "Good morning to you too. I hope you slept well."),
    ("Thank you for your help.", "You are welcome. It was a pleasure."),
    ("Do you like music?", "Yes, I enjoy a quiet song in the evening."),
    ("What did you do on the weekend?", "I read a long book and went for a walk."),
    ("Can you recommend a book?", "Try a story about the sea and a brave sailor."),
    ("I visited {city} last year.", "That sounds lovely. {city} is a beautiful city."),
    ("My friend lives in {city}.", "How nice. I hope you visit your friend in {city} soon."),
    ("My sister {name} loves {topic}.", "That is lovely. {name} has good taste."),
    ("I had a long day on {day}.", "I am sorry to hear that. I hope you can rest now."),
    ("I am learning {lang} this year.", "Good luck! {lang} is a beautiful language."),
    ("Let us talk about {topic}.", "Gladly. What would you like to say about it?"),
    ("{name} said {word} to me in {lang}.", "How sweet of {name}. Did you answer?"),
    ("I miss the weather in {city}.", "I understand. Memories of {city} are precious."),
    ("Please tell me something nice about {topic}.", "Gladly. {topic} is lovely at this time of year."),
    ("I want to hear a story about {topic}, please.", "Once upon a time there was {topic}, and it was calm."),
)


def slots(rng: random.Random) -> dict[str, str]:
    """Random values for every slot a template may name."""
    return {
        "city": rng.choice(CITIES),
        "n": str(rng.randint(2, 500)),
        "name": rng.choice(NAMES),
        "day": rng.choice(DAYS),
        "topic": rng.choice(TOPICS),
        "subject": rng.choice(SUBJECTS),
        "lang": rng.choice(LANGUAGES),
        "word": rng.choice(WORDS),
    }


def fill(rng: random.Random, template: Template) -> tuple[str, str]:
    """``template`` (a request and its call, or a message and its reply) with fresh slot values."""
    values = slots(rng)
    return template[0].format(**values), template[1].format(**values)


def tool_call_text(request: str, call: str) -> str:
    """The document of a request answered with a call: ``<user> REQUEST <assistant> <call>CALL</call>``."""
    return f"{USER} {request} {ASSISTANT} {CALL_OPEN}{call}{CALL_CLOSE}"


def chat_text(message: str, reply: str) -> str:
    """The document of chit-chat: ``<user> MESSAGE <assistant> REPLY``."""
    return f"{USER} {message} {ASSISTANT} {reply}"
