"""The local tokenizers of the test pipelines: shipped in :mod:`sadakit.bundled.tokenizers` (the
bundled models need them too), re-exported here for the test pipeline builders."""

from sadakit.bundled.tokenizers import (
    CLIP_BOS,
    CLIP_EOS,
    ROBERTA_MASK,
    ROBERTA_SPECIALS_HEAD,
    T5_SPECIALS,
    byte_chars,
    clip_tokenizer,
    clip_vocab,
    roberta_tokenizer,
    roberta_vocab,
    t5_tokenizer,
    t5_vocab,
)

__all__ = [
    "CLIP_BOS", "CLIP_EOS", "ROBERTA_MASK", "ROBERTA_SPECIALS_HEAD", "T5_SPECIALS", "byte_chars", "clip_tokenizer",
    "clip_vocab", "roberta_tokenizer", "roberta_vocab", "t5_tokenizer", "t5_vocab",
]
