"""What kind of text a token is: word, number, punctuation, whitespace, code symbol, special, or other.

The kind comes from the token's own text, decoded alone (``tokenizer.decode([id])``), with its leading and
trailing whitespace set aside (byte-level BPE tokens carry their space: ``" Paris"`` is a word). The rules,
tried in this order:

1. **special**: the id is one of ``tokenizer.all_special_ids`` (``<bos>``, ``<eos>``, ``<pad>`` ...), or an
   added token that the tokenizer marks special, or an added token written like a marker (``<call>``,
   ``<|im_start|>``, ``[INST]``): chat and tool-call markers are control tokens, not text.
2. **whitespace**: nothing but whitespace (``" "``, ``"\\n\\n"``).
3. **number**: digits, optionally grouped by ``.`` or ``,`` (``"42"``, ``" 3.14"``, ``"1,000"``).
4. **word**: letters (any script), optionally with digits and apostrophes, at least one letter (``"'s"``,
   ``" naïve"``, ``"x2"``).
5. **punctuation**: only punctuation of prose: ``. , ; : ! ? ' " - ( ) …`` and their typographic forms.
6. **code symbol**: no letter or digit and at least one character of code (``= { } [ ] < > + * / \\ | & ^
   % $ # @ ~ ` _``), e.g. ``"=="``, ``"{"``, ``"->"``; or an identifier joined by underscores (``"__init__"``,
   ``"max_len"``).
7. **other**: anything else, e.g. a byte fragment of a multi-byte character (decoded as ``"\\ufffd"``) or a
   token mixing kinds (``"P."``).

Examples:
    >>> [token_type(text) for text in [" Paris", " 42", "?", "  ", "==", "<call>", "\\ufffd"]]
    ['word', 'number', 'punctuation', 'whitespace', 'code symbol', 'other', 'other']
    >>> token_type("<call>", special=True)
    'special'
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mechscope.core.lm import LanguageModel

TokenType = Literal["word", "number", "punctuation", "whitespace", "code symbol", "special", "other"]
#: Every token type, in the order the results list them.
TOKEN_TYPES: tuple[TokenType, ...] = get_args(TokenType)

#: Punctuation of prose; anything else that is neither a letter nor a digit counts towards code.
PROSE_PUNCTUATION = frozenset(".,;:!?'\"-()\u2026\u2013\u2014\u2018\u2019\u201c\u201d\u00ab\u00bb\u00a1\u00bf")
#: Characters that make a symbol token code: operators, brackets and sigils of programming languages.
CODE_CHARACTERS = frozenset("={}[]<>+*/\\|&^%$#@~`_")

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
#: A marker-like added token: ``<call>``, ``</call>``, ``<|im_start|>``, ``[INST]``.
_MARKER = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")
#: How byte-level and SentencePiece vocabularies write spaces and newlines inside a token.
_SPACE_MARKS = str.maketrans({"\u0120": " ", "\u2581": " ", "\u010a": "\n", "\u0109": "\t"})


def token_type(text: str, *, special: bool = False) -> TokenType:
    """The type of a token from its decoded text (see the module's rules); ``special`` wins over the text.

    Examples:
        >>> [token_type(text) for text in ["'s", " 1,000", "->", "max_len", "P.", "\\n\\n"]]
        ['word', 'number', 'code symbol', 'code symbol', 'other', 'whitespace']
        >>> token_type(" Paris", special=True)  # the caller knows the id is special: the text is not read
        'special'
    """
    if special:
        return "special"
    if text == "":
        return "other"
    core = text.strip()
    if core == "":
        return "whitespace"
    if _NUMBER.fullmatch(core):
        return "number"
    if any(c.isalpha() for c in core) and all(c.isalnum() or c in "'\u2019" for c in core):
        return "word"
    if all(c in PROSE_PUNCTUATION for c in core):
        return "punctuation"
    if "_" in core and all(c.isalnum() or c == "_" for c in core):
        return "code symbol"
    symbols = all(not c.isalnum() and not c.isspace() and c != "\ufffd" for c in core)
    if symbols and any(c in CODE_CHARACTERS for c in core):
        return "code symbol"
    return "other"


def special_ids(tokenizer: object) -> frozenset[int]:
    """The ids `token_type` calls special: the tokenizer's special ids and its special or marker-like added tokens."""
    found = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    for index, token in added.items():
        content = str(getattr(token, "content", token))
        if getattr(token, "special", False) or _MARKER.fullmatch(content):
            found.add(int(index))
    return frozenset(found)


class TokenTypes:
    """The type of each token id of one model's tokenizer, decoded once per id and remembered.

    Examples:
        >>> import mechscope as ms
        >>> types = TokenTypes(ms.load("toy-moe"))
        >>> ids = types.lm.tokenizer("<call>time(city=Rome)</call>")["input_ids"]
        >>> [(types.text(i), types.of(i)) for i in ids[1:5]]
        [('<call>', 'special'), ('time', 'word'), ('(', 'punctuation'), ('city', 'word')]
        >>> types.of(ids[5]), types.of(ids[-1])
        ('code symbol', 'special')
    """

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self._special = special_ids(lm.tokenizer)
        self._known: dict[int, TokenType] = {}

    def of(self, token_id: int) -> TokenType:
        """The type of one token id."""
        found = self._known.get(token_id)
        if found is None:
            found = token_type(self.text(token_id), special=token_id in self._special)
            self._known[token_id] = found
        return found

    def text(self, token_id: int) -> str:
        """The token's text, decoded alone; a token that decodes to nothing is read from its vocabulary entry."""
        tokenizer = self.lm.tokenizer
        text = str(tokenizer.decode([token_id]))
        if text == "":
            # SentencePiece decodes a lone "▁" to "": its vocabulary entry still says it is a space.
            text = str(tokenizer.convert_ids_to_tokens(token_id) or "").translate(_SPACE_MARKS)
        return text

    def indices(self, token_ids: Iterable[int]) -> list[int]:
        """The position in `TOKEN_TYPES` of each id's type."""
        return [TOKEN_TYPES.index(self.of(int(i))) for i in token_ids]
