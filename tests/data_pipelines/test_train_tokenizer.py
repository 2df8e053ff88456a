"""Training the sentencepiece tokenizer on a captions manifest (data_pipelines/train_tokenizer)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from data_pipelines.train_tokenizer import read_captions, train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_manifest(path, num_train: int = 40, num_eval: int = 4) -> None:
    """Templated captions in the synthetic world's manifest layout (train and eval records)."""
    rng = np.random.default_rng(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(num_train + num_eval):
            size, colour = rng.choice(["small", "large"]), rng.choice(["red", "blue", "cyan"])
            shape, move = rng.choice(["ball", "star", "ring"]), rng.choice(["left", "right"])
            record = {"id": f"clip-{i}", "caption": f"A {size} {colour} {shape} moves {move}.",
                      "short_caption": f"a {colour} {shape}",
                      "split": "train" if i < num_train else "eval"}
            if i == num_train:
                record["caption"] = "An unseen zebra"           # only in the eval split
            f.write(json.dumps(record) + "\n")


def test_cli_writes_a_t5_style_model(tmp_path):
    manifest = tmp_path / "captions.jsonl"
    _write_manifest(manifest)
    result = subprocess.run(
        [sys.executable, "-m", "data_pipelines.train_tokenizer", f"--captions={manifest}",
         f"--out={tmp_path / 'tok' / 'spm'}", "--vocab_size=100",
         "--fields=caption,short_caption"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    assert "read 80 texts" in result.stdout and "pieces" in result.stdout
    assert (tmp_path / "tok" / "spm.vocab").exists()
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "spm.model"))
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert sp.id_to_piece(0) == "<pad>" and sp.id_to_piece(1) == "</s>"
    # Words always followed by the same character are still whole pieces (see train_tokenizer).
    for word in ("small", "large", "cyan", "ball", "moves", "left"):
        assert sp.encode(word, out_type=str) == ["▁" + word]
    assert "zebra" not in sp.encode("zebra", out_type=str)[0]     # eval captions unused


def test_training_is_deterministic(tmp_path):
    manifest = tmp_path / "captions.jsonl"
    _write_manifest(manifest)
    prefix = str(tmp_path / "tok")
    with open(train_tokenizer(str(manifest), prefix, vocab_size=60), "rb") as f:
        first = f.read()
    with open(train_tokenizer(str(manifest), prefix, vocab_size=60), "rb") as f:
        assert f.read() == first
    assert spm.SentencePieceProcessor(model_proto=first).vocab_size() <= 60


def test_read_captions_fields_and_splits(tmp_path):
    manifest = tmp_path / "captions.jsonl"
    _write_manifest(manifest, num_train=3, num_eval=2)
    assert len(read_captions(str(manifest), ["caption", "short_caption"])) == 6
    assert len(read_captions(str(manifest), ["short_caption"], split=None)) == 5
    assert read_captions(str(manifest), ["caption"], split="eval")[0] == "An unseen zebra"
    with pytest.raises(ValueError, match=r"captions.jsonl:1: record has no field 'prompt'"):
        read_captions(str(manifest), ["prompt"])
    with pytest.raises(ValueError, match="no captions"):
        read_captions(str(manifest), ["caption"], split="test")
