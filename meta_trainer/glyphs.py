"""Glyph bank: letters of many Unicode scripts rendered from the Noto fonts.

A Unicode script plays the role of an Omniglot alphabet and a letter (one code
point) is a class. The examples of a class are its renderings in every font
file that maps the code point, so different families, weights and slants of
fonts-noto-core give 2 to about 17 base renderings per class. Random distortions
are added later, when episodes are sampled.

Filtering rules, applied in this order:

* Fonts whose file name marks them as math, music, symbol, SignWriting or
  numeral fonts are skipped, because their letter-like glyphs are styled
  symbols rather than letters of a writing system.
* A code point is a candidate only if its Unicode general category is Lu, Ll
  or Lo, so combining marks, modifier letters, digits, punctuation and symbols
  never become classes. Code points of the Common (Zyyy), Inherited (Zinh) and
  Unknown (Zzzz) scripts are dropped because they are not an alphabet.
* A font renders a code point only if its cmap maps it, so a font never
  contributes a fallback glyph.
* A rendering is dropped if it has too little ink (empty or near-empty glyphs)
  or if it equals the font's .notdef glyph.
* Identical renderings of one class (for example two fonts that share a glyph
  design) count once.
* Only classes with at least ``MIN_RENDERINGS_PER_CLASS`` (1) distinct base
  rendering are kept. Many scripts are covered by a single font file, so most
  classes have one base rendering and their examples differ by the random
  distortions of the task distribution, as Omniglot characters differ by
  the hand that drew them.
* At most ``max_classes_per_script`` classes are kept per script (default
  ``DEFAULT_MAX_CLASSES_PER_SCRIPT`` = 200), taken in code point order, so
  large syllabaries and the precomposed Latin, Greek and Cyrillic letters do
  not dominate the task distribution. Code point order keeps the basic letters
  of each script, which Unicode encodes first in its main block.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import fontTools
import numpy as np
import PIL
from fontTools import unicodedata as font_unicodedata
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

DEFAULT_FONT_DIR = Path("/usr/share/fonts/truetype/noto")
DEFAULT_IMAGE_SIZE = 28
DEFAULT_MAX_CLASSES_PER_SCRIPT = 200
MIN_RENDERINGS_PER_CLASS = 1

LETTER_CATEGORIES = frozenset({"Lu", "Ll", "Lo"})
NON_ALPHABET_SCRIPTS = frozenset({"Zyyy", "Zinh", "Zzzz"})
SKIPPED_FONT_NAME_PARTS = ("Math", "Music", "Symbols", "SignWriting", "Numerals")

SPLIT_NAMES = ("meta_train", "meta_val", "meta_test")
SCRIPT_SPLITS_PATH = Path(__file__).with_name("script_splits.json")

# Bump when rendering or filtering changes, so cached banks are rebuilt.
BANK_FORMAT_VERSION = 1

# A rendering needs at least this fraction of the em square (em_pixels ** 2)
# as ink pixels (value >= 128). The smallest letter measured in fonts-noto-core
# covers 1.1 %, so 0.3 % only removes empty and near-empty glyphs.
MIN_INK_FRACTION = 0.003
# Mean absolute difference (out of 255) below which a rendering counts as the
# .notdef glyph of its font. Every letter kept in the default bank differs by
# at least 6.0 from the .notdef glyph of every font.
NOTDEF_MAX_MEAN_DIFFERENCE = 2.0
# The glyph's longer side fills image_size * GLYPH_BOX_FRACTION pixels, so a
# 28 x 28 image has a 20 x 20 glyph box and a 4-pixel margin, as in MNIST.
GLYPH_BOX_FRACTION = 20 / 28


@dataclass
class GlyphBank:
    """Rendered letter images with one class per (script, code point).

    ``images[i]`` is a white-on-black rendering (ink = 255) of class
    ``labels[i]``. ``class_names[c]`` is like ``"Latn U+0041"`` and
    ``class_scripts[c]`` is the ISO 15924 code of class ``c``. Every class has
    at least one image; banks from ``build_glyph_bank`` have at least
    ``MIN_RENDERINGS_PER_CLASS`` images per class.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    class_scripts: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 3:
            raise ValueError(
                f"images must be a uint8 array of shape (N, H, W), "
                f"got dtype {self.images.dtype} and shape {self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(
                f"labels must be an int64 array of shape ({len(self.images)},), "
                f"got dtype {self.labels.dtype} and shape {self.labels.shape}"
            )
        if len(self.class_names) != len(self.class_scripts):
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but "
                f"class_scripts has {len(self.class_scripts)}; they must match"
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes - 1}], "
                f"got range [{self.labels.min()}, {self.labels.max()}]"
            )
        counts = np.bincount(self.labels, minlength=self.num_classes)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            raise ValueError(
                f"every class needs at least one image, but class "
                f"{self.class_names[empty[0]]!r} (label {empty[0]}) has none"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def scripts(self) -> list[str]:
        """Sorted ISO 15924 codes of the scripts that have classes in this bank."""
        return sorted(set(self.class_scripts))

    def __len__(self) -> int:
        return len(self.images)

    def split(self, name: str) -> GlyphBank:
        """Restrict the bank to the scripts of split ``name``, renumbering labels from 0.

        The scripts of each split come from ``script_splits.json``. Classes
        keep their relative order. Scripts of this bank that the file does not
        assign belong to no split.
        """
        if name not in SPLIT_NAMES:
            raise ValueError(f"invalid split {name!r}, expected one of {', '.join(SPLIT_NAMES)}")
        split_scripts = set(load_script_splits()[name])
        return self.select_scripts(split_scripts)

    def select_scripts(self, scripts: Iterable[str]) -> GlyphBank:
        """Return a bank with only the classes of ``scripts``, labels renumbered from 0."""
        selected_scripts = set(scripts)
        kept_classes = [c for c, script in enumerate(self.class_scripts) if script in selected_scripts]
        new_label_of_class = np.full(self.num_classes, -1, dtype=np.int64)
        new_label_of_class[kept_classes] = np.arange(len(kept_classes), dtype=np.int64)

        new_labels = new_label_of_class[self.labels]
        keep_images = new_labels >= 0
        return GlyphBank(
            images=self.images[keep_images],
            labels=new_labels[keep_images],
            class_names=[self.class_names[c] for c in kept_classes],
            class_scripts=[self.class_scripts[c] for c in kept_classes],
        )


# --------------------------------------------------------------------------
# Script splits


def load_script_splits(path: Path = SCRIPT_SPLITS_PATH) -> dict[str, tuple[str, ...]]:
    """Read the fixed assignment of script codes to meta_train, meta_val and meta_test.

    Raises ValueError if a split is missing, is not a list of strings, or
    shares a script with another split.
    """
    with path.open(encoding="utf-8") as handle:
        raw = json.load(handle)

    splits: dict[str, tuple[str, ...]] = {}
    for name in SPLIT_NAMES:
        scripts = raw.get(name)
        if not isinstance(scripts, list) or not all(isinstance(s, str) for s in scripts):
            raise ValueError(f"{path}: split {name!r} must be a list of script codes, got {scripts!r}")
        splits[name] = tuple(scripts)

    seen: dict[str, str] = {}
    for name, scripts in splits.items():
        for script in scripts:
            if script in seen:
                raise ValueError(f"{path}: script {script!r} is in both {seen[script]!r} and {name!r}")
            seen[script] = name
    return splits


def assign_script_splits(
    scripts: Iterable[str],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    train_scripts: Sequence[str] = ("Latn",),
) -> dict[str, list[str]]:
    """Assign script codes to splits deterministically, independent of input order.

    ``train_scripts`` always go to meta_train. The remaining codes are ordered
    by the SHA-256 hex digest of the code. With ``n`` scripts in all, the first
    ``round(val_fraction * n)`` go to meta_val, the next
    ``round(test_fraction * n)`` to meta_test and the rest to meta_train. This
    is how ``script_splits.json`` was generated.
    """
    all_scripts = sorted(set(scripts))
    forced = [s for s in all_scripts if s in set(train_scripts)]
    others = sorted(
        (s for s in all_scripts if s not in set(train_scripts)),
        key=lambda code: hashlib.sha256(code.encode("ascii")).hexdigest(),
    )
    num_val = round(val_fraction * len(all_scripts))
    num_test = round(test_fraction * len(all_scripts))
    return {
        "meta_train": sorted(forced + others[num_val + num_test :]),
        "meta_val": sorted(others[:num_val]),
        "meta_test": sorted(others[num_val : num_val + num_test]),
    }


def log_unassigned_scripts(bank: GlyphBank) -> list[str]:
    """Log, in one line, the scripts of ``bank`` that no split in script_splits.json contains."""
    assigned = {script for scripts in load_script_splits().values() for script in scripts}
    unassigned = [script for script in bank.scripts if script not in assigned]
    if unassigned:
        logger.info(
            "ignoring %d scripts that %s assigns to no split: %s",
            len(unassigned),
            SCRIPT_SPLITS_PATH.name,
            " ".join(unassigned),
        )
    return unassigned


# --------------------------------------------------------------------------
# Rendering


def render_em_pixels(image_size: int) -> int:
    """Font size in pixels per em used to render glyphs before downsampling to ``image_size``."""
    return max(64, 3 * image_size)


def _load_font(font_path: Path, em_pixels: int) -> ImageFont.FreeTypeFont:
    # The basic layout engine maps one code point to one glyph through the
    # cmap, with no shaping, so results do not depend on whether libraqm is
    # installed.
    return ImageFont.truetype(str(font_path), size=em_pixels, layout_engine=ImageFont.Layout.BASIC)


def _draw_cropped(font: ImageFont.FreeTypeFont, text: str) -> np.ndarray:
    """Draw ``text`` white on black and crop it to the pixels with ink, or return a (0, 0) array if none."""
    left, top, right, bottom = font.getbbox(text)
    if right <= left or bottom <= top:
        return np.zeros((0, 0), dtype=np.uint8)

    pad = 2
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=font, fill=255)
    pixels = np.asarray(canvas)

    rows = np.flatnonzero(pixels.any(axis=1))
    cols = np.flatnonzero(pixels.any(axis=0))
    if len(rows) == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    return pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _fit_to_square(glyph: np.ndarray, image_size: int) -> np.ndarray:
    """Centre a cropped glyph in a square with a margin, resize it and stretch its maximum to 255."""
    height, width = glyph.shape
    side = int(np.ceil(max(height, width) / GLYPH_BOX_FRACTION))
    square = np.zeros((side, side), dtype=np.uint8)
    top = (side - height) // 2
    left = (side - width) // 2
    square[top : top + height, left : left + width] = glyph

    resample = Image.Resampling.BOX if side >= image_size else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(square).resize((image_size, image_size), resample=resample))

    peak = int(small.max())
    if peak == 0:
        return small.copy()
    return np.clip(small.astype(np.float32) * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)


def _unmapped_code_point(cmap: Mapping[int, str]) -> int:
    """Pick a code point the font does not map, so drawing it shows the .notdef glyph."""
    for code_point in (0x10FFFD, 0xFFFFD, 0xF8FF, 0xE000):
        if code_point not in cmap:
            return code_point
    for code_point in range(0xE001, 0xF8FF):
        if code_point not in cmap:
            return code_point
    raise ValueError("font maps every private-use code point, so no .notdef probe is available")


def render_notdef(font_path: Path, image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Render the .notdef glyph of a font the same way letters are rendered.

    Returns a (image_size, image_size) uint8 image, all zeros if the .notdef
    glyph is empty.
    """
    cmap = TTFont(str(font_path), lazy=True).getBestCmap() or {}
    font = _load_font(font_path, render_em_pixels(image_size))
    glyph = _draw_cropped(font, chr(_unmapped_code_point(cmap)))
    if glyph.size == 0:
        return np.zeros((image_size, image_size), dtype=np.uint8)
    return _fit_to_square(glyph, image_size)


@dataclass(frozen=True)
class _ScriptJob:
    script: str
    # (code point, font files that map it), in code point order.
    candidates: tuple[tuple[int, tuple[str, ...]], ...]
    image_size: int
    max_classes: int | None


@dataclass
class _ScriptResult:
    script: str
    code_points: list[int]
    # One (k, H, W) uint8 array per kept code point, k >= MIN_RENDERINGS_PER_CLASS.
    renderings: list[np.ndarray]
    dropped_low_ink: int
    dropped_notdef: int
    dropped_classes: int


class _FontCache:
    """Per-process cache of loaded fonts and their rendered .notdef glyphs."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self.em_pixels = render_em_pixels(image_size)
        self._fonts: dict[str, ImageFont.FreeTypeFont] = {}
        self._notdefs: dict[str, np.ndarray] = {}

    def font(self, font_path: str) -> ImageFont.FreeTypeFont:
        if font_path not in self._fonts:
            self._fonts[font_path] = _load_font(Path(font_path), self.em_pixels)
        return self._fonts[font_path]

    def notdef(self, font_path: str) -> np.ndarray:
        if font_path not in self._notdefs:
            self._notdefs[font_path] = render_notdef(Path(font_path), self.image_size).astype(np.float32)
        return self._notdefs[font_path]


_worker_font_cache: _FontCache | None = None


def _render_script(job: _ScriptJob) -> _ScriptResult:
    """Render the candidates of one script in code point order until the class cap is reached."""
    global _worker_font_cache
    if _worker_font_cache is None or _worker_font_cache.image_size != job.image_size:
        _worker_font_cache = _FontCache(job.image_size)
    cache = _worker_font_cache
    min_ink_pixels = MIN_INK_FRACTION * cache.em_pixels**2

    result = _ScriptResult(job.script, [], [], 0, 0, 0)
    for code_point, font_paths in job.candidates:
        if job.max_classes is not None and len(result.code_points) >= job.max_classes:
            break

        distinct: dict[bytes, np.ndarray] = {}
        for font_path in font_paths:
            glyph = _draw_cropped(cache.font(font_path), chr(code_point))
            if glyph.size == 0 or np.count_nonzero(glyph >= 128) < min_ink_pixels:
                result.dropped_low_ink += 1
                continue
            image = _fit_to_square(glyph, job.image_size)
            difference = np.abs(image.astype(np.float32) - cache.notdef(font_path)).mean()
            if difference < NOTDEF_MAX_MEAN_DIFFERENCE:
                result.dropped_notdef += 1
                continue
            distinct.setdefault(image.tobytes(), image)

        if len(distinct) < MIN_RENDERINGS_PER_CLASS:
            result.dropped_classes += 1
            continue
        result.code_points.append(code_point)
        result.renderings.append(np.stack(list(distinct.values())))
    return result


# --------------------------------------------------------------------------
# Font scanning


def _font_files(font_dir: Path) -> list[Path]:
    if not font_dir.is_dir():
        raise FileNotFoundError(
            f"font directory {font_dir} not found; install the Debian package fonts-noto-core "
            f"or pass font_dir"
        )
    paths = sorted(p for p in font_dir.iterdir() if p.suffix.lower() in {".ttf", ".otf"})
    if not paths:
        raise FileNotFoundError(f"no .ttf or .otf files in {font_dir}")
    return paths


def _is_skipped_font(font_path: Path) -> bool:
    return any(part in font_path.stem for part in SKIPPED_FONT_NAME_PARTS)


def _letter_script(code_point: int) -> str | None:
    """Return the script of a letter code point, or None if it is not a letter of an alphabet."""
    if font_unicodedata.category(chr(code_point)) not in LETTER_CATEGORIES:
        return None
    script = font_unicodedata.script(chr(code_point))
    if script in NON_ALPHABET_SCRIPTS:
        return None
    return script


def _collect_candidates(
    font_paths: Sequence[Path], scripts: frozenset[str] | None
) -> dict[str, list[tuple[int, tuple[str, ...]]]]:
    """Map each script to its letter code points, each with the font files that map it.

    Only code points mapped by at least MIN_RENDERINGS_PER_CLASS fonts are
    kept, because the others cannot reach that many distinct renderings.
    """
    fonts_of_code_point: dict[int, list[str]] = defaultdict(list)
    script_of_code_point: dict[int, str] = {}
    for font_path in font_paths:
        if _is_skipped_font(font_path):
            logger.debug("skipping %s: math, music, symbol or numeral font", font_path.name)
            continue
        cmap = TTFont(str(font_path), lazy=True).getBestCmap() or {}
        num_letters = 0
        for code_point in cmap:
            if code_point not in script_of_code_point:
                script = _letter_script(code_point)
                script_of_code_point[code_point] = script or ""
            script = script_of_code_point[code_point]
            if not script or (scripts is not None and script not in scripts):
                continue
            fonts_of_code_point[code_point].append(str(font_path))
            num_letters += 1
        if num_letters == 0:
            logger.debug("skipping %s: maps no letters of the requested scripts", font_path.name)

    candidates: dict[str, list[tuple[int, tuple[str, ...]]]] = defaultdict(list)
    for code_point in sorted(fonts_of_code_point):
        font_list = fonts_of_code_point[code_point]
        candidates[script_of_code_point[code_point]].append((code_point, tuple(font_list)))

    return {
        script: [(cp, fonts) for cp, fonts in entries if len(fonts) >= MIN_RENDERINGS_PER_CLASS]
        for script, entries in sorted(candidates.items())
    }


# --------------------------------------------------------------------------
# Building and caching


def _validate_build_arguments(
    image_size: int, scripts: Iterable[str] | None, max_classes_per_script: int | None, workers: int
) -> frozenset[str] | None:
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    if max_classes_per_script is not None and max_classes_per_script < 1:
        raise ValueError(f"max_classes_per_script must be None or >= 1, got {max_classes_per_script!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if scripts is None:
        return None
    if isinstance(scripts, str):
        raise ValueError(f"scripts must be a list of ISO 15924 codes such as ['Latn'], got the string {scripts!r}")
    return frozenset(scripts)


def build_glyph_bank(
    font_dir: Path = DEFAULT_FONT_DIR,
    image_size: int = DEFAULT_IMAGE_SIZE,
    scripts: Iterable[str] | None = None,
    max_classes_per_script: int | None = DEFAULT_MAX_CLASSES_PER_SCRIPT,
    workers: int = 2,
) -> GlyphBank:
    """Render the letters of every script in ``font_dir`` into a GlyphBank.

    ``scripts`` restricts the bank to these ISO 15924 codes (None: all
    scripts). ``max_classes_per_script`` caps the classes per script, taken in
    code point order (None: no cap). ``workers`` processes render scripts in
    parallel. The result does not depend on ``workers``: classes are ordered
    by script code, then code point.

    Only classes with at least MIN_RENDERINGS_PER_CLASS (1) distinct base
    renderings are kept. Raises ValueError if a requested script has no
    letters in any font, or if no class survives filtering.
    """
    requested = _validate_build_arguments(image_size, scripts, max_classes_per_script, workers)
    font_dir = Path(font_dir)
    start = time.perf_counter()
    font_paths = _font_files(font_dir)
    candidates = _collect_candidates(font_paths, requested)

    if requested is not None:
        missing = sorted(requested - set(candidates))
        if missing:
            raise ValueError(
                f"scripts {missing} have no letters in any font under {font_dir}. "
                f"Scripts with letters there: {' '.join(sorted(_collect_candidates(font_paths, None)))}"
            )

    jobs = [
        _ScriptJob(script, tuple(entries), image_size, max_classes_per_script)
        for script, entries in candidates.items()
        if entries
    ]
    logger.info(
        "rendering up to %s letters per script for %d scripts from %d font files in %s with %d workers",
        max_classes_per_script if max_classes_per_script is not None else "all",
        len(jobs),
        len(font_paths),
        font_dir,
        workers,
    )
    results = _run_jobs(jobs, workers)

    bank = _assemble_bank(results, image_size)
    if bank.num_classes == 0:
        raise ValueError(
            f"no letter class with at least {MIN_RENDERINGS_PER_CLASS} distinct renderings "
            f"under {font_dir} for scripts {sorted(requested) if requested else 'all'}"
        )
    dropped_scripts = sorted(set(candidates) - set(bank.scripts))
    logger.info(
        "built glyph bank: %d images, %d classes, %d scripts in %.1f s. "
        "%d scripts have no letter with %d distinct renderings: %s",
        len(bank),
        bank.num_classes,
        len(bank.scripts),
        time.perf_counter() - start,
        len(dropped_scripts),
        MIN_RENDERINGS_PER_CLASS,
        " ".join(dropped_scripts),
    )
    log_unassigned_scripts(bank)
    return bank


def _job_cost(job: _ScriptJob) -> int:
    limit = job.max_classes if job.max_classes is not None else len(job.candidates)
    return sum(len(fonts) for _, fonts in job.candidates[:limit])


def _run_jobs(jobs: Sequence[_ScriptJob], workers: int) -> dict[str, _ScriptResult]:
    # Longest jobs first, so that Latin (up to 17 fonts per letter) does not finish last.
    ordered = sorted(jobs, key=_job_cost, reverse=True)
    results: dict[str, _ScriptResult] = {}

    def record(result: _ScriptResult) -> None:
        results[result.script] = result
        logger.info(
            "rendered %s (%d/%d): %d classes kept, %d dropped, %d low-ink and %d .notdef renderings dropped",
            result.script,
            len(results),
            len(jobs),
            len(result.code_points),
            result.dropped_classes,
            result.dropped_low_ink,
            result.dropped_notdef,
        )

    if workers == 1 or len(ordered) <= 1:
        for job in ordered:
            record(_render_script(job))
        return results

    # "fork" lets callers use this without an `if __name__ == "__main__"` guard,
    # which "spawn" would need. The workers call only Pillow, NumPy and logging,
    # so they need none of the threads (for example torch's) that fork drops.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(processes=min(workers, len(ordered))) as pool:
        for result in pool.imap_unordered(_render_script, ordered, chunksize=1):
            record(result)
    return results


def _assemble_bank(results: Mapping[str, _ScriptResult], image_size: int) -> GlyphBank:
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    class_names: list[str] = []
    class_scripts: list[str] = []
    for script in sorted(results):
        result = results[script]
        for code_point, renderings in zip(result.code_points, result.renderings):
            label = len(class_names)
            class_names.append(f"{script} U+{code_point:04X}")
            class_scripts.append(script)
            images.append(renderings)
            labels.append(np.full(len(renderings), label, dtype=np.int64))

    if not images:
        return GlyphBank(
            images=np.zeros((0, image_size, image_size), dtype=np.uint8),
            labels=np.zeros(0, dtype=np.int64),
            class_names=[],
            class_scripts=[],
        )
    return GlyphBank(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        class_names=class_names,
        class_scripts=class_scripts,
    )


def _bank_settings(
    image_size: int, scripts: Iterable[str] | None, max_classes_per_script: int | None
) -> dict[str, object]:
    """Return the build settings that, with the font files, determine a bank."""
    return {
        "format_version": BANK_FORMAT_VERSION,
        "image_size": image_size,
        "scripts": sorted(scripts) if scripts is not None else None,
        "max_classes_per_script": max_classes_per_script,
    }


def glyph_bank_cache_key(
    font_dir: Path = DEFAULT_FONT_DIR,
    image_size: int = DEFAULT_IMAGE_SIZE,
    scripts: Iterable[str] | None = None,
    max_classes_per_script: int | None = DEFAULT_MAX_CLASSES_PER_SCRIPT,
) -> str:
    """Hash the build settings, the font file names and sizes, and the Pillow and fontTools versions."""
    key_fields = {
        **_bank_settings(image_size, scripts, max_classes_per_script),
        "pillow": PIL.__version__,
        "fonttools": fontTools.version,
        "fonts": [[path.name, path.stat().st_size] for path in _font_files(Path(font_dir))],
    }
    encoded = json.dumps(key_fields, sort_keys=True).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


def save_glyph_bank(bank: GlyphBank, path: Path, settings: Mapping[str, object] | None = None) -> None:
    """Write ``bank`` to ``path`` as a compressed .npz, atomically (temporary file + os.replace).

    ``settings``, if given, is stored as a JSON string under the key "settings".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "images": bank.images,
        "labels": bank.labels,
        "class_names": np.array(bank.class_names, dtype=np.str_),
        "class_scripts": np.array(bank.class_scripts, dtype=np.str_),
    }
    if settings is not None:
        arrays["settings"] = np.array(json.dumps(dict(settings), sort_keys=True), dtype=np.str_)

    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False)
    try:
        with handle:
            np.savez_compressed(handle, **arrays)
        # NamedTemporaryFile creates the file with mode 0600, so set the usual 0644.
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def load_glyph_bank(path: Path) -> GlyphBank:
    """Read a bank written by ``save_glyph_bank``, with allow_pickle=False so object arrays are rejected."""
    with np.load(path, allow_pickle=False) as data:
        return GlyphBank(
            images=data["images"],
            labels=data["labels"],
            class_names=[str(name) for name in data["class_names"]],
            class_scripts=[str(script) for script in data["class_scripts"]],
        )


def _find_cached_bank_without_fonts(cache_dir: Path, settings: Mapping[str, object]) -> Path | None:
    """Return the newest cached bank built with ``settings``, or None if there is none."""
    paths = sorted(Path(cache_dir).glob("glyph_bank_*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    expected = json.dumps(dict(settings), sort_keys=True)
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as data:
                stored = str(data["settings"]) if "settings" in data.files else None
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            logger.warning("failed to read cached glyph bank %s (%s), skipping it", path, error)
            continue
        if stored == expected:
            return path
    return None


def load_or_build_glyph_bank(
    cache_dir: Path,
    font_dir: Path = DEFAULT_FONT_DIR,
    image_size: int = DEFAULT_IMAGE_SIZE,
    scripts: Iterable[str] | None = None,
    max_classes_per_script: int | None = DEFAULT_MAX_CLASSES_PER_SCRIPT,
    workers: int = 2,
) -> GlyphBank:
    """Load the bank for these settings from ``cache_dir``, building and caching it if absent.

    The file name contains ``glyph_bank_cache_key(...)``, so changing a
    setting, a font file or the Pillow or fontTools version selects another
    file. An unreadable cache file is logged and rebuilt. If ``font_dir`` does
    not exist, the newest cached bank with the same settings is loaded
    (logged as a warning), and FileNotFoundError is raised if there is none.
    """
    scripts = sorted(scripts) if scripts is not None else None
    settings = _bank_settings(image_size, scripts, max_classes_per_script)

    # A machine without the fonts (for example a training server) can still use
    # a bank cached elsewhere with the same settings, but cannot verify its fonts.
    if not Path(font_dir).is_dir():
        cached = _find_cached_bank_without_fonts(Path(cache_dir), settings)
        if cached is None:
            raise FileNotFoundError(
                f"font directory {font_dir} not found and {cache_dir} has no cached glyph bank with "
                f"settings {settings}. Install the Debian package fonts-noto-core or copy a cached bank there."
            )
        logger.warning(
            "font directory %s not found, using cached glyph bank %s without checking its fonts", font_dir, cached
        )
        bank = load_glyph_bank(cached)
        log_unassigned_scripts(bank)
        return bank

    key = glyph_bank_cache_key(font_dir, image_size, scripts, max_classes_per_script)
    path = Path(cache_dir) / f"glyph_bank_{key[:16]}.npz"

    if path.exists():
        try:
            bank = load_glyph_bank(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            logger.warning("failed to read cached glyph bank %s (%s), rebuilding it", path, error)
        else:
            logger.info("loaded glyph bank from %s: %d images, %d classes", path, len(bank), bank.num_classes)
            log_unassigned_scripts(bank)
            return bank

    bank = build_glyph_bank(
        font_dir=font_dir,
        image_size=image_size,
        scripts=scripts,
        max_classes_per_script=max_classes_per_script,
        workers=workers,
    )
    save_glyph_bank(bank, path, settings)
    logger.info("cached glyph bank at %s", path)
    return bank
