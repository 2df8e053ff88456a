r"""Trains the text encoder's sentencepiece tokenizer on the captions of a JSONL manifest.

    python -m data_pipelines.train_tokenizer --captions=runs/world/captions.jsonl \
        --out=runs/world/tokenizer --vocab_size=1000

reads the `--fields` of every record (one JSON object per line, e.g. the synthetic world's
captions.jsonl) whose "split" is `--split` (records without a "split" are always used), and
writes PREFIX.model and PREFIX.vocab: a unigram model with T5's special ids (pad 0, eos 1, unk 2,
no bos) for vidgen.models.text_encoder.Tokenizer. vocab_size is an upper bound: a small corpus
gets the pieces it supports. Deterministic: the same inputs give byte-identical files.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm
from absl import app, flags

DEFAULT_FIELDS = ("caption", "short_caption")


def read_captions(path: str, fields: Sequence[str], split: str | None = "train") -> list[str]:
    """The non-empty `fields` of each record in the JSONL manifest at path, in file order;
    records whose "split" differs from split are skipped (split=None keeps all)."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if split is not None and record.get("split", split) != split:
                continue
            for field in fields:
                if field not in record:
                    raise ValueError(f"{path}:{line_number}: record has no field {field!r} "
                                     f"(fields: {sorted(record)})")
                if record[field]:
                    texts.append(str(record[field]))
    if not texts:
        raise ValueError(f"{path}: no captions in fields {list(fields)} for split {split!r}")
    return texts


def train_tokenizer(captions_path: str, out_prefix: str, vocab_size: int,
                    fields: Sequence[str] = DEFAULT_FIELDS, split: str | None = "train") -> str:
    """Trains a unigram sentencepiece model on the captions; returns the path of PREFIX.model."""
    if vocab_size < 4:
        raise ValueError(f"vocab_size={vocab_size}: must be >= 4 (pad, eos, unk and a piece)")
    texts = read_captions(captions_path, fields, split)
    print(f"read {len(texts)} texts from {captions_path} (fields {list(fields)}, split {split})",
          flush=True)
    # sentencepiece seeds unigram pieces with right-maximal repeats, so in templated captions a
    # word always followed by the same character ("large " in "a large red ball", "left.") would
    # never be a piece: each distinct word is also given once as its own sentence.
    words = sorted({word for text in texts for word in re.findall(r"\w+", text)})
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    spm.set_random_generator_seed(0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts + words), model_prefix=out_prefix, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
        input_sentence_size=0, shuffle_input_sentence=False, minloglevel=1)
    return out_prefix + ".model"


def summarize(model_path: str, texts: Sequence[str]) -> str:
    """A one-paragraph report: vocabulary size, token counts (EOS included) and an example."""
    processor = spm.SentencePieceProcessor(model_file=model_path)
    lengths = np.array([len(ids) + 1 for ids in processor.encode(list(texts))])
    example = " ".join(processor.encode(texts[0], out_type=str))
    return (f"wrote {model_path}: {processor.vocab_size()} pieces; tokens per text incl. EOS: "
            f"mean {lengths.mean():.1f}, max {lengths.max()} (a Tokenizer max_length >= "
            f"{lengths.max()} never truncates these)\nexample: {texts[0]!r} -> {example}")


def define_flags() -> None:
    """The CLI's flags; defined only when run as a program, so importing this module next to
    another CLI with an --out flag (e.g. synthetic_world) does not clash."""
    flags.DEFINE_string("captions", None, "JSONL manifest of captions.", required=True)
    flags.DEFINE_string("out", None, "Output prefix: writes OUT.model and OUT.vocab.",
                        required=True)
    flags.DEFINE_integer("vocab_size", 1000, "Largest vocabulary size.")
    flags.DEFINE_list("fields", list(DEFAULT_FIELDS), "Record fields holding text.")
    flags.DEFINE_string("split", "train", "Use records of this split ('' = all).")


def main(argv: list[str]) -> None:
    """Trains the tokenizer the flags describe and prints a summary."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    start = time.perf_counter()
    split = f.split or None
    model_path = train_tokenizer(f.captions, f.out, f.vocab_size, f.fields, split)
    print(summarize(model_path, read_captions(f.captions, f.fields, split)))
    print(f"trained in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    define_flags()
    app.run(main)
