"""Tests of the glyph bank and the episode sampler, on a small bank of three scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fontTools import unicodedata as font_unicodedata

from meta_trainer.glyphs import (
    DEFAULT_FONT_DIR,
    LETTER_CATEGORIES,
    MIN_RENDERINGS_PER_CLASS,
    SPLIT_NAMES,
    GlyphBank,
    _render_script,
    _ScriptJob,
    assign_script_splits,
    build_glyph_bank,
    load_or_build_glyph_bank,
    load_script_splits,
    render_notdef,
)
from meta_trainer.task_distribution import EpisodeSampler

pytestmark = pytest.mark.skipif(
    not DEFAULT_FONT_DIR.is_dir(), reason=f"{DEFAULT_FONT_DIR} not found; install fonts-noto-core"
)

# One script from each split: Latin has 17 fonts, the other two have 2 each.
TEST_SCRIPTS = {"meta_train": "Latn", "meta_val": "Hmnp", "meta_test": "Olck"}
MAX_CLASSES = 8
IMAGE_SIZE = 28


@pytest.fixture(scope="module")
def bank() -> GlyphBank:
    return build_glyph_bank(scripts=list(TEST_SCRIPTS.values()), max_classes_per_script=MAX_CLASSES, workers=1)


def code_point_of(class_name: str) -> int:
    script, code = class_name.split(" ")
    assert code.startswith("U+"), class_name
    return int(code[2:], 16)


def test_bank_images_uint8_with_ink(bank: GlyphBank) -> None:
    assert bank.images.dtype == np.uint8
    assert bank.images.shape == (len(bank), IMAGE_SIZE, IMAGE_SIZE)
    assert bank.labels.dtype == np.int64
    assert (bank.images.max(axis=(1, 2)) == 255).all()
    ink_pixels = (bank.images >= 128).sum(axis=(1, 2))
    assert ink_pixels.min() >= 10
    # Black background: the border rows and columns are margin.
    assert bank.images[:, 0, :].max() == 0
    assert bank.images[:, :, 0].max() == 0


def test_bank_class_counts(bank: GlyphBank) -> None:
    assert sorted(bank.scripts) == sorted(TEST_SCRIPTS.values())
    assert bank.num_classes == len(set(bank.class_names))
    images_per_class = np.bincount(bank.labels, minlength=bank.num_classes)
    assert images_per_class.min() >= MIN_RENDERINGS_PER_CLASS
    for script in TEST_SCRIPTS.values():
        assert 1 <= bank.class_scripts.count(script) <= MAX_CLASSES


def test_bank_renderings_of_class_distinct(bank: GlyphBank) -> None:
    for label in range(bank.num_classes):
        renderings = bank.images[bank.labels == label]
        assert len({image.tobytes() for image in renderings}) == len(renderings), bank.class_names[label]


def test_classes_are_letters_only(bank: GlyphBank) -> None:
    for name, script in zip(bank.class_names, bank.class_scripts):
        character = chr(code_point_of(name))
        category = font_unicodedata.category(character)
        assert category in LETTER_CATEGORIES, f"{name} has category {category}"
        assert not category.startswith("M"), f"{name} is a combining mark"
        assert not category.startswith("P"), f"{name} is punctuation"
        assert font_unicodedata.script(character) == script, name
        assert name.startswith(script + " ")


def test_no_image_equals_notdef(bank: GlyphBank) -> None:
    font_paths = sorted(DEFAULT_FONT_DIR.glob("*.ttf"))
    notdefs = np.stack([render_notdef(path, IMAGE_SIZE) for path in font_paths]).astype(np.float32)
    images = bank.images.astype(np.float32)
    # Mean absolute difference of every bank image to every font's .notdef box.
    differences = np.abs(images[:, None] - notdefs[None]).mean(axis=(2, 3))
    closest = np.unravel_index(differences.argmin(), differences.shape)
    # build_glyph_bank drops renderings within 2.0 of their font's .notdef glyph.
    assert differences.min() > 2.0, (
        f"{bank.class_names[bank.labels[closest[0]]]} looks like the .notdef glyph of {font_paths[closest[1]].name}"
    )


def test_notdef_renderings_dropped() -> None:
    # NotoSans maps no Thai letter, so both renderings fall back to .notdef.
    fonts = tuple(str(DEFAULT_FONT_DIR / name) for name in ("NotoSans-Regular.ttf", "NotoSans-Bold.ttf"))
    job = _ScriptJob("Thai", ((ord("\u0e01"), fonts),), IMAGE_SIZE, None)
    result = _render_script(job)
    assert result.code_points == []
    assert result.dropped_notdef == 2
    assert result.dropped_classes == 1


def test_bank_independent_of_workers(bank: GlyphBank) -> None:
    parallel = build_glyph_bank(scripts=list(TEST_SCRIPTS.values()), max_classes_per_script=MAX_CLASSES, workers=2)
    assert parallel.class_names == bank.class_names
    assert np.array_equal(parallel.labels, bank.labels)
    assert np.array_equal(parallel.images, bank.images)


def test_build_rejects_unknown_script() -> None:
    with pytest.raises(ValueError, match="Qaaa"):
        build_glyph_bank(scripts=["Qaaa"], max_classes_per_script=1, workers=1)


def test_cache_round_trip(tmp_path: Path) -> None:
    settings = {"scripts": ["Olck"], "max_classes_per_script": 3, "workers": 1}
    built = load_or_build_glyph_bank(tmp_path, **settings)
    cached_files = list(tmp_path.iterdir())
    assert len(cached_files) == 1
    assert cached_files[0].suffix == ".npz"

    loaded = load_or_build_glyph_bank(tmp_path, **settings)
    assert loaded.class_names == built.class_names
    assert loaded.class_scripts == built.class_scripts
    assert np.array_equal(loaded.images, built.images)
    assert np.array_equal(loaded.labels, built.labels)

    load_or_build_glyph_bank(tmp_path, scripts=["Olck"], max_classes_per_script=2, workers=1)
    assert len(list(tmp_path.iterdir())) == 2


def test_cache_used_without_fonts(tmp_path: Path) -> None:
    settings = {"scripts": ["Olck"], "max_classes_per_script": 3}
    built = load_or_build_glyph_bank(tmp_path, workers=1, **settings)
    missing_fonts = tmp_path / "no-fonts"

    loaded = load_or_build_glyph_bank(tmp_path, font_dir=missing_fonts, **settings)
    assert loaded.class_names == built.class_names
    assert np.array_equal(loaded.images, built.images)

    with pytest.raises(FileNotFoundError, match="no-fonts"):
        load_or_build_glyph_bank(tmp_path, font_dir=missing_fonts, scripts=["Olck"], max_classes_per_script=4)


def test_script_splits_file_consistent() -> None:
    splits = load_script_splits()
    assert set(splits) == set(SPLIT_NAMES)
    assert "Latn" in splits["meta_train"]
    all_scripts = [script for scripts in splits.values() for script in scripts]
    assert len(all_scripts) == len(set(all_scripts))
    regenerated = assign_script_splits(all_scripts)
    assert {name: tuple(scripts) for name, scripts in regenerated.items()} == splits


def test_splits_disjoint(bank: GlyphBank) -> None:
    parts = {name: bank.split(name) for name in SPLIT_NAMES}
    for name, part in parts.items():
        assert part.scripts == [TEST_SCRIPTS[name]]
        assert set(part.scripts) <= set(load_script_splits()[name])
        assert np.array_equal(np.unique(part.labels), np.arange(part.num_classes))

    names = [set(part.class_names) for part in parts.values()]
    scripts = [set(part.scripts) for part in parts.values()]
    for i in range(len(SPLIT_NAMES)):
        for j in range(i + 1, len(SPLIT_NAMES)):
            assert not names[i] & names[j]
            assert not scripts[i] & scripts[j]
    assert sum(len(part) for part in parts.values()) == len(bank)


def test_split_keeps_images_of_class(bank: GlyphBank) -> None:
    part = bank.split("meta_val")
    for label, name in enumerate(part.class_names):
        original = bank.class_names.index(name)
        assert np.array_equal(part.images[part.labels == label], bank.images[bank.labels == original])


def test_split_rejects_unknown_name(bank: GlyphBank) -> None:
    with pytest.raises(ValueError, match="meta_tset.*meta_train, meta_val, meta_test"):
        bank.split("meta_tset")


def test_episode_shapes_and_ranges(bank: GlyphBank) -> None:
    sampler = EpisodeSampler(bank, min_way=2, max_way=5, min_shot=1, max_shot=3, query_per_class=4)
    rng = np.random.default_rng(0)
    ways, shots = set(), set()
    for _ in range(60):
        episode = sampler.sample(rng)
        way, shot = episode.way, episode.shot
        ways.add(way)
        shots.add(shot)
        assert 2 <= way <= 5
        assert 1 <= shot <= 3
        assert episode.support_images.shape == (way * shot, 1, IMAGE_SIZE, IMAGE_SIZE)
        assert episode.query_images.shape == (way * 4, 1, IMAGE_SIZE, IMAGE_SIZE)
        assert episode.support_images.dtype == torch.float32
        assert episode.query_images.dtype == torch.float32
        assert episode.support_images.min() >= 0
        assert episode.support_images.max() <= 1
        assert episode.query_images.min() >= 0
        assert episode.query_images.max() <= 1
        assert episode.support_labels.dtype == torch.int64
        assert torch.equal(episode.support_labels, torch.arange(way).repeat_interleave(shot))
        assert torch.equal(episode.query_labels, torch.arange(way).repeat_interleave(4))
        assert episode.query_per_class == 4
        assert len(episode.class_names) == way
        assert len(set(episode.class_names)) == way
        assert set(episode.class_names) <= set(bank.class_names)
        # Every image keeps some ink after the distortions.
        assert (episode.support_images.amax(dim=(1, 2, 3)) > 0.2).all()
    assert ways == {2, 3, 4, 5}
    assert shots == {1, 2, 3}


def test_episode_fixed_way_and_shot(bank: GlyphBank) -> None:
    sampler = EpisodeSampler(bank, max_way=3)
    episode = sampler.sample(np.random.default_rng(1), way=5, shot=1)
    assert episode.way == 5
    assert episode.shot == 1
    assert episode.support_images.shape[0] == 5
    assert episode.query_images.shape[0] == 5 * sampler.query_per_class


def test_episode_without_augmentation_uses_bank_images(bank: GlyphBank) -> None:
    sampler = EpisodeSampler(bank, max_way=4, augment=False)
    episode = sampler.sample(np.random.default_rng(2), way=4, shot=2)
    bank_images = {image.tobytes() for image in bank.images}
    for image in torch.cat([episode.support_images, episode.query_images]):
        pixels = (image[0].numpy() * 255).round().astype(np.uint8)
        assert pixels.tobytes() in bank_images


def test_same_seed_same_episode(bank: GlyphBank) -> None:
    sampler = EpisodeSampler(bank, max_way=6)
    first = sampler.sample(np.random.default_rng(7))
    second = sampler.sample(np.random.default_rng(7))
    other = sampler.sample(np.random.default_rng(8))
    assert first.way == second.way
    assert first.shot == second.shot
    assert first.class_names == second.class_names
    assert torch.equal(first.support_images, second.support_images)
    assert torch.equal(first.query_images, second.query_images)
    assert torch.equal(first.support_labels, second.support_labels)
    assert not (
        first.class_names == other.class_names
        and first.support_images.shape == other.support_images.shape
        and torch.equal(first.support_images, other.support_images)
    )


def test_augmentation_changes_images(bank: GlyphBank) -> None:
    plain = EpisodeSampler(bank, max_way=4, augment=False).sample(np.random.default_rng(3), way=4, shot=5)
    distorted = EpisodeSampler(bank, max_way=4, augment=True).sample(np.random.default_rng(3), way=4, shot=5)
    assert plain.class_names == distorted.class_names
    assert not torch.equal(plain.support_images, distorted.support_images)


def test_sampler_rejects_max_way_above_classes(bank: GlyphBank) -> None:
    too_many = bank.num_classes + 1
    with pytest.raises(ValueError, match=rf"max_way must be in \[min_way=2, {bank.num_classes}\].*got {too_many}"):
        EpisodeSampler(bank, max_way=too_many)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"min_way": 1}, r"min_way must be in \[2, max_way=20\], got 1"),
        ({"min_way": 6, "max_way": 5}, r"min_way must be in \[2, max_way=5\], got 6"),
        ({"min_shot": 0}, r"got \[0, 10\]"),
        ({"min_shot": 4, "max_shot": 3}, r"got \[4, 3\]"),
        ({"query_per_class": 0}, r"query_per_class must be >= 1, got 0"),
    ],
)
def test_sampler_rejects_bad_ranges(bank: GlyphBank, arguments: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(bank, **{"max_way": 20, **arguments})


def test_sample_rejects_bad_fixed_way(bank: GlyphBank) -> None:
    sampler = EpisodeSampler(bank, max_way=4)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"way must be in \[2, \d+\] for this bank, got 1"):
        sampler.sample(rng, way=1)
    with pytest.raises(ValueError, match=rf"got {bank.num_classes + 1}"):
        sampler.sample(rng, way=bank.num_classes + 1)
    with pytest.raises(ValueError, match="shot must be >= 1, got 0"):
        sampler.sample(rng, shot=0)

