"""Tokenizers built locally, so neither the bundled models nor the test pipelines touch a model hub.

Shipped code: the bundled models' tokenizers are built by these functions (``sadakit.testing``
re-exports them for the random-weight pipelines). Each tokenizer is a real ``transformers`` class with a tiny vocabulary; they survive
``save_pretrained`` / ``from_pretrained(dir, local_files_only=True)`` like hub ones.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from transformers import CLIPTokenizer, RobertaTokenizer, T5Tokenizer

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
ROBERTA_SPECIALS_HEAD = ("<s>", "<pad>", "</s>", "<unk>")
ROBERTA_MASK = "<mask>"
T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def byte_chars() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes.

    With an empty merge list every byte is one token, so any text tokenizes.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def clip_vocab() -> dict[str, int]:
    """Byte chars, the same with ``</w>`` (word ends), then bos and eos: 514 ids."""
    chars = byte_chars()
    pieces = chars + [c + "</w>" for c in chars] + [CLIP_BOS, CLIP_EOS]
    return {p: i for i, p in enumerate(pieces)}


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes; eos id is ``len(vocab) - 1`` (513).

    The CLIP text config must use this eos id, because CLIPTextModel pools at it.
    """
    return CLIPTokenizer(vocab=clip_vocab(), merges=[], model_max_length=model_max_length)


def roberta_vocab() -> dict[str, int]:
    """``<s> <pad> </s> <unk>``, the 256 byte chars, ``<mask>``: 261 ids (pad = 1, eos = 2)."""
    pieces = list(ROBERTA_SPECIALS_HEAD) + byte_chars() + [ROBERTA_MASK]
    return {p: i for i, p in enumerate(pieces)}


def roberta_tokenizer(model_max_length: int = 77) -> RobertaTokenizer:
    """A byte-level Roberta tokenizer (the one CLAP / MusicLDM use), no merges."""
    return RobertaTokenizer(vocab=roberta_vocab(), merges=[], model_max_length=model_max_length)


#: Score of a whole-word piece (:func:`t5_vocab` ``words=``): above every split into characters
#: (at most -3 - 4 = -7 for two characters), so the unigram model keeps a known word whole.
T5_WORD_SCORE = -1.0


def t5_vocab(words: Iterable[str] | None = None) -> list[tuple[str, float]]:
    """A small unigram vocabulary: specials, word-start and inner single characters.

    Scores are log-probabilities; word-start pieces are slightly preferred, so text
    splits into one piece per character, as a character-level T5 would.

    ``words``: also one word-start piece ``"\u2581" + word`` per word (after every character
    piece, so the character ids stay the same), scored :data:`T5_WORD_SCORE`, so each of these
    words is one token, as a subword vocabulary like real T5's / UMT5's keeps common words;
    any other text still tokenizes by characters. Words that are already one piece (single
    characters) and repeats are skipped.
    """
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces: list[tuple[str, float]] = [(s, 0.0) for s in T5_SPECIALS]
    pieces.append(("\u2581", -2.0))
    pieces += [("\u2581" + c, -3.0) for c in chars]
    pieces += [(c, -4.0) for c in chars]
    if words is not None:
        known = {piece for piece, _ in pieces}
        for word in words:
            if not word or any(c.isspace() for c in word):
                raise ValueError(f"a vocabulary word must be non-empty without spaces, got {word!r}")
            piece = "\u2581" + word
            if piece not in known:
                known.add(piece)
                pieces.append((piece, T5_WORD_SCORE))
    return pieces


def t5_tokenizer(model_max_length: int = 512, words: Iterable[str] | None = None) -> T5Tokenizer:
    """A T5 tokenizer over :func:`t5_vocab` (pad = 0, eos = 1, unk = 2), no extra ids;
    ``words`` adds whole-word pieces (see :func:`t5_vocab`)."""
    return T5Tokenizer(vocab=t5_vocab(words), extra_ids=0, model_max_length=model_max_length)
