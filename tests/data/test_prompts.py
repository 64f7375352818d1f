"""Prompt templates and prompt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewclip.data import (
    DATASET_TEMPLATES,
    IMAGENET_TEMPLATES_7,
    OPENAI_IMAGENET_TEMPLATES,
    PromptError,
    PromptSet,
    get_prompts,
    load_prompts,
)


def test_reference_templates() -> None:
    assert DATASET_TEMPLATES["eurosat"] == "a centered satellite photo of {}."
    assert DATASET_TEMPLATES["dtd"] == "{} texture."
    assert DATASET_TEMPLATES["food101"] == "a photo of {}, a type of food."
    assert DATASET_TEMPLATES["ucf101"] == "a photo of a person doing {}."
    assert IMAGENET_TEMPLATES_7[0] == "itap of a {}."
    assert len(IMAGENET_TEMPLATES_7) == 7
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80 == len(set(OPENAI_IMAGENET_TEMPLATES))
    assert OPENAI_IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert all(t.count("{}") == 1 for t in OPENAI_IMAGENET_TEMPLATES)


def test_defaults_follow_the_references() -> None:
    assert get_prompts("default", "imagenet").templates == IMAGENET_TEMPLATES_7
    assert get_prompts("default", "ImageNet").name == "imagenet-7"
    assert get_prompts("default", "fgvc").templates == ("a photo of a {}, a type of aircraft.",)
    assert get_prompts("single", "imagenet").templates == ("a photo of a {}.",)
    assert get_prompts("default").templates == ("a photo of a {}.",)
    assert get_prompts("openai-80").templates == OPENAI_IMAGENET_TEMPLATES
    assert get_prompts("a drawing of a {}.").templates == ("a drawing of a {}.",)
    with pytest.raises(PromptError, match="unknown prompt set"):
        get_prompts("nonsense")


def test_sentences_replace_underscores() -> None:
    ps = get_prompts("default", "oxford_pets")
    assert ps.sentences(["american_bulldog"]) == [["a photo of a american bulldog, a type of pet."]]
    ens = PromptSet("two", ("a {}.", "the {}!"))
    assert ens.sentences(["x_y", "z"]) == [["a x y.", "the x y!"], ["a z.", "the z!"]]


def test_text_file(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("# my templates\na photo of a {}.\n\n  a sketch of a {}.  \n")
    ps = load_prompts(f)
    assert ps.templates == ("a photo of a {}.", "a sketch of a {}.")
    assert ps.name == "file:t.txt"
    assert get_prompts(str(f)).templates == ps.templates
    f.write_text("a photo of a {}.\nno placeholder here\n")
    with pytest.raises(PromptError, match=r"t.txt:2: a template must contain '\{\}' exactly once"):
        load_prompts(f)


def test_json_mapping_llm_prompts(tmp_path: Path) -> None:
    f = tmp_path / "cupl.json"
    f.write_text(
        json.dumps(
            {"golden retriever": ["A friendly dog.", "Golden fur."], "tabby cat": "A striped cat."}
        )
    )
    ps = load_prompts(f)
    assert ps.sentences(["golden_retriever", "tabby cat"]) == [
        ["A friendly dog.", "Golden fur."],
        ["A striped cat."],
    ]
    with pytest.raises(PromptError, match=r"no sentences for 1 classes: 'emu'"):
        ps.sentences(["tabby cat", "emu"])
    with pytest.warns(UserWarning, match="1 entries match no class"):
        ps.sentences(["tabby cat"])
    # templates fill in for classes without own sentences
    mixed = PromptSet("mixed", ("a photo of a {}.",), ps.per_class)
    with pytest.warns(UserWarning, match="'golden retriever'"):
        got = mixed.sentences(["emu", "tabby cat"])
    assert got == [["a photo of a emu."], ["A striped cat."]]


def test_json_list_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "l.json"
    f.write_text(json.dumps(["a {}.", "b {}."]))
    assert load_prompts(f).templates == ("a {}.", "b {}.")
    f.write_text(json.dumps({"cat": []}))
    with pytest.raises(PromptError, match="class 'cat': expected a sentence or a non-empty list"):
        load_prompts(f)
    f.write_text("{oops")
    with pytest.raises(PromptError, match="not valid JSON"):
        load_prompts(f)
    with pytest.raises(PromptError, match="prompt file not found"):
        load_prompts(tmp_path / "none.txt")


def test_record_and_fingerprint() -> None:
    a = PromptSet("a", ("x {}.",))
    b = PromptSet("b", ("x {}.",))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != PromptSet("c", ("y {}.",)).fingerprint()
    assert a.to_dict() == {"name": "a", "templates": ["x {}."], "per_class": {}}
    with pytest.raises(PromptError, match="is empty"):
        PromptSet("e")
