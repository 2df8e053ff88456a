"""launch/sample.py's prompts: --prompt values, then a prompt file in the format launch/evaluate.py
reads (JSONL with caption and optional scene, or plain text lines). The sampling itself runs in
tests/launch/test_end_to_end.py."""

import json

import pytest
from absl import app

from launch import sample


def test_prompt_records_from_flags_and_both_file_formats(tmp_path):
    jsonl, text = tmp_path / "prompts.jsonl", tmp_path / "prompts.txt"
    jsonl.write_text(json.dumps({"caption": "a red ball", "scene": {"seed": 3}}) + "\n\n"
                     + json.dumps({"caption": "a blue cube", "id": "x"}) + "\n")
    text.write_text("a green star grows\n\n  two squares  \n")
    assert sample.prompt_records(["a cat"], str(jsonl)) == [
        {"caption": "a cat", "scene": None}, {"caption": "a red ball", "scene": {"seed": 3}},
        {"caption": "a blue cube", "scene": None}]
    assert sample.prompt_records([], str(text)) == [
        {"caption": "a green star grows", "scene": None}, {"caption": "two squares", "scene": None}]


def test_prompt_records_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"caption": "ok"}) + "\n" + json.dumps({"text": "no caption"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: no \"caption\""):
        sample.prompt_records([], str(bad))
    with pytest.raises(app.UsageError, match="no prompts"):
        sample.prompt_records([], None)
