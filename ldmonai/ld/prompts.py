"""Text prompts for LD: Simple or Diverse templates, with or without patient information.

Patient fields come from the slice index that ``ldmonai prep slices`` writes (``age``,
``sex``, ``diagnosis``). Age is rendered Binned ("slightly old"), as a Word
("seventy-seven") or Numerical ("77"), as the paper compares.
"""

from __future__ import annotations

import random
from typing import Mapping

from ldmonai.errors import LdmonaiError

__all__ = ["AGE_STYLES", "FIELDS", "PromptBuilder", "age_in_words", "render_age"]

FIELDS = ("age", "sex", "diagnosis")
AGE_STYLES = ("binned", "word", "numerical")
DIAGNOSES = {"cn": "cognitively normal", "mci": "mild cognitive impairment", "ad": "alzheimer's disease",
             "normal": "normal", "pneumonia": "pneumonia", "effusion": "effusion"}

SIMPLE = "a {modality} of a {subject}"
DIVERSE = (
    "a {modality} of a {subject}",
    "an image of a {subject}, {modality}",
    "a {modality} showing a {subject}",
    "a medical {modality} of a {subject}",
    "a clinical {modality} of a {subject}",
    "a slice of a {modality} of a {subject}",
    "a {modality} scan of a {subject}",
    "a photo of a {modality} of a {subject}",
    "a radiology {modality} of a {subject}",
    "a grayscale {modality} of a {subject}",
    "a close-up {modality} of a {subject}",
    "a high quality {modality} of a {subject}",
    "a low contrast {modality} of a {subject}",
    "a cropped {modality} of a {subject}",
    "a centred {modality} of a {subject}",
    "a diagnostic {modality} of a {subject}",
    "a hospital {modality} of a {subject}",
    "a {subject} in a {modality}",
    "the {modality} of a {subject}",
    "a research {modality} of a {subject}",
)

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def age_in_words(age: int) -> str:
    """0 to 129 in English words ("seventy-seven", "one hundred and two").

    Hand-written: ages are the only numbers rendered, and a number-to-words package would be a
    dependency for twenty lines.
    """
    if not 0 <= age < 130:
        raise LdmonaiError(f"age {age} is outside 0 to 129", None, "check the age column of the slice index")
    if age >= 100:
        rest = age - 100
        return "one hundred" + (f" and {age_in_words(rest)}" if rest else "")
    if age < 20:
        return _ONES[age]
    tens, ones = divmod(age, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")


def render_age(age: float, style: str = "binned", bins: tuple[int, int] = (70, 80)) -> str:
    """``binned``: slightly (< 70), moderately (< 80) or significantly (>= 80) old; ``word``; ``numerical``."""
    a = int(round(float(age)))
    if style == "binned":
        level = "slightly" if a < bins[0] else "moderately" if a < bins[1] else "significantly"
        return f"{level} old"
    if style == "word":
        return f"{age_in_words(a)} year old"
    if style == "numerical":
        return f"{a} year old"
    raise LdmonaiError(f"unknown age style {style!r}", None, f"use one of {', '.join(AGE_STYLES)}")


class PromptBuilder:
    """Prompts for one dataset: ``builder(record)`` -> a prompt string.

    Args:
        modality: e.g. ``"brain mri"``, ``"chest x-ray"``.
        subject: the noun, e.g. ``"brain"``; a DreamBooth identifier goes in front (``"sks brain"``).
        templates: ``simple`` (one template) or ``diverse`` (twenty), drawn at random per call.
        fields: patient fields to include, a subset of ``FIELDS`` (empty: no patient information).
        age_style: ``binned``, ``word`` or ``numerical``.
        seed: random source of the diverse templates, so that a run's prompts reproduce.
    """

    def __init__(self, modality: str = "brain mri", subject: str = "brain", templates: str = "simple",
                 fields: tuple[str, ...] = (), age_style: str = "binned", seed: int = 0) -> None:
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise LdmonaiError(f"unknown prompt field(s) {unknown}", None, f"use any of {', '.join(FIELDS)}")
        if templates not in ("simple", "diverse"):
            raise LdmonaiError(f"unknown template set {templates!r}", None, "use 'simple' or 'diverse'")
        if age_style not in AGE_STYLES:
            raise LdmonaiError(f"unknown age style {age_style!r}", None, f"use one of {', '.join(AGE_STYLES)}")
        self.modality, self.subject, self.fields, self.age_style = modality, subject, tuple(fields), age_style
        self.templates = (SIMPLE,) if templates == "simple" else DIVERSE
        self.rng = random.Random(seed)

    def subject_phrase(self, record: Mapping | None = None) -> str:
        """The subject with the patient information, e.g.
        "seventy-seven year old female brain with mild cognitive impairment"."""
        record = record or {}
        for f in self.fields:
            if record.get(f) in (None, ""):
                raise LdmonaiError(f"the record has no {f!r}", record.get("image"),
                                   f"add a {f} column to the slice index or drop {f!r} from the prompt fields")
        words = []
        if "age" in self.fields:
            words.append(render_age(record["age"], self.age_style))
        if "sex" in self.fields:
            sex = str(record["sex"]).strip().lower()
            words.append({"f": "female", "m": "male"}.get(sex[:1], sex))
        words.append(self.subject)
        if "diagnosis" in self.fields:
            dx = str(record["diagnosis"]).strip().lower()
            words.append(f"with {DIAGNOSES.get(dx, dx)}")
        return " ".join(words)

    def __call__(self, record: Mapping | None = None) -> str:
        return self.rng.choice(self.templates).format(modality=self.modality, subject=self.subject_phrase(record))

    def instruction(self, source: Mapping, target: Mapping) -> str:
        """An InstructPix2Pix edit instruction from the source's to the target's patient fields,
        e.g. "age this seventy year old brain with normal cognition into seventy-seven year old
        brain with mild cognitive impairment"."""
        return f"age this {self.subject_phrase(source)} into {self.subject_phrase(target)}"

    def vocabulary(self) -> list[str]:
        """Every word these prompts can use, for the toolkit's own word-level text encoder."""
        words = set()
        for t in self.templates:
            words.update(t.replace(",", " , ").replace("{modality}", self.modality).replace("{subject}", self.subject).split())
        words.update("slightly moderately significantly old year female male with age this into".split())
        for a in range(130):
            words.update(age_in_words(a).split())
        for dx in DIAGNOSES.values():
            words.update(dx.split())
        words.update(str(a) for a in range(130))
        return sorted(words)
