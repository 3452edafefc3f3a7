"""The word-level option of the bundled T5 tokenizer (``t5_vocab(words=...)``): known words are one
piece each, any other text still tokenizes by characters, the default is unchanged, and it
survives ``save_pretrained`` / ``from_pretrained``."""

from __future__ import annotations

import pytest
from transformers import T5Tokenizer

from sadakit.bundled import data_moving_shapes
from sadakit.bundled.moving_shapes import model as M
from sadakit.bundled.tokenizers import t5_tokenizer, t5_vocab

WORDS = ["a", "red", "circle", "square", "moving", "left"]


def test_default_vocabulary_is_unchanged() -> None:
    chars = t5_vocab()
    assert t5_vocab(None) == chars and len(chars) == 192
    with_words = t5_vocab(WORDS)
    assert with_words[: len(chars)] == chars  # character ids stay where they were
    # "a" is already the piece "\u2581a": only the five longer words are added, once each
    assert [p for p, _ in with_words[len(chars):]] == ["\u2581" + w for w in WORDS[1:]]
    assert len(t5_vocab(WORDS + WORDS)) == len(with_words)
    assert t5_tokenizer().tokenize("a red circle") == ["\u2581a", "\u2581r", "e", "d", "\u2581c", "i", "r", "c", "l", "e"]


def test_known_words_are_single_pieces_and_other_text_is_characters() -> None:
    tok = t5_tokenizer(words=WORDS)
    assert tok.tokenize("a red square moving left") == ["\u2581" + w for w in "a red square moving left".split()]
    assert tok.tokenize("a blue dog") == ["\u2581a", "\u2581b", "l", "u", "e", "\u2581d", "o", "g"]
    assert tok.tokenize("Circle") == ["\u2581C", "i", "r", "c", "l", "e"]  # case-sensitive: not the known word
    assert tok.unk_token_id not in tok("a red circle, 42 dogs!").input_ids
    with pytest.raises(ValueError, match="without spaces"):
        t5_vocab(["two words"])


def test_word_tokenizer_round_trips_offline(tmp_path) -> None:
    tok = t5_tokenizer(model_max_length=32, words=WORDS)
    tok.save_pretrained(tmp_path)
    loaded = T5Tokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = ["a red circle moving left", "a cat, 42 dogs!", ""]
    assert loaded(text, padding="max_length", max_length=32).input_ids == tok(text, padding="max_length", max_length=32).input_ids
    assert len(loaded) == len(t5_vocab(WORDS))


def test_moving_shapes_word_tokenizer_and_text_encoder_agree() -> None:
    words = M.prompt_words()
    assert {"square", "circle", "triangle", "moving", "left", "yellow"} <= set(words)
    tok = M.build_tokenizer("words")
    for prompt in data_moving_shapes.conditioning_prompts()[1:]:
        assert len(tok(prompt).input_ids) == len(prompt.split()) + 1  # one piece a word, then eos
    assert M.build_text_encoder("words").config.vocab_size == len(tok)
    assert M.build_text_encoder().config.vocab_size == len(M.build_tokenizer()) == len(t5_vocab())
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        M.build_tokenizer("bytes")
