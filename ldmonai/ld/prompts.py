"""Text prompts for LD: Simple or Diverse templates, with or without patient information.

Patient fields come from the slice index that ``ldmonai prep slices`` writes (``age``,
``sex``, ``diagnosis``). The paper compares three renderings of age (Binned, Word,
Numerical). For a counterfactual, the age in an instruction is the *difference* between the
source and the target scan, binned as slight (< 5 years), moderate (5 to 10) or significant
(> 10), or spelled out ("seven years older") or in digits ("7 years older"). One scan's own age
has no bin: it is a Word ("seventy-seven year old") or Numerical ("77 year old").
"""

from __future__ import annotations

import random
from typing import Mapping

from ldmonai.errors import LdmonaiError

__all__ = ["AGE_DIFFERENCE_BINS", "AGE_STYLES", "FIELDS", "PromptBuilder", "age_difference_level", "age_in_words",
           "render_age", "render_age_difference"]

FIELDS = ("age", "sex", "diagnosis")
AGE_STYLES = ("binned", "word", "numerical")
#: years of age difference where the paper's bins change: slight below 5, moderate 5 to 10, significant above 10
AGE_DIFFERENCE_BINS = (5.0, 10.0)
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


def render_age(age: float, style: str = "numerical") -> str:
    """One scan's age: ``word`` ("seventy-seven year old") or ``numerical`` ("77 year old").

    ``binned`` is refused: the paper's bins describe an age *difference* between two scans
    (:func:`render_age_difference`), not an age.
    """
    a = int(round(float(age)))
    if style == "word":
        return f"{age_in_words(a)} year old"
    if style == "numerical":
        return f"{a} year old"
    if style == "binned":
        raise LdmonaiError("binned age describes the age difference between two scans, not one scan's age", None,
                           "use age_style 'word' or 'numerical' for prompts of single slices; binned ages belong "
                           "in instructions (PromptBuilder.instruction)")
    raise LdmonaiError(f"unknown age style {style!r}", None, f"use one of {', '.join(AGE_STYLES)}")


def age_difference_level(years: float) -> str:
    """The paper's bin of an age difference: ``slightly`` (|d| < 5), ``moderately`` (5 <= |d| <= 10)
    or ``significantly`` (|d| > 10). Binned on the exact difference, before any rounding."""
    d = abs(float(years))
    low, high = AGE_DIFFERENCE_BINS
    return "slightly" if d < low else "moderately" if d <= high else "significantly"


def render_age_difference(source_age: float, target_age: float, style: str = "binned") -> str:
    """How much older (or younger) the target scan is than the source, in ``style``:
    ``binned`` ("moderately older"), ``word`` ("seven years older") or ``numerical``
    ("7 years older"); "the same age" when the difference is zero."""
    if style not in AGE_STYLES:
        raise LdmonaiError(f"unknown age style {style!r}", None, f"use one of {', '.join(AGE_STYLES)}")
    d = float(target_age) - float(source_age)
    years = int(round(abs(d)))
    if d == 0 or (style != "binned" and years == 0):
        return "the same age"
    direction = "older" if d > 0 else "younger"
    if style == "binned":
        return f"{age_difference_level(d)} {direction}"
    amount = age_in_words(years) if style == "word" else str(years)
    return f"{amount} year{'s' if years != 1 else ''} {direction}"


class PromptBuilder:
    """Prompts for one dataset: ``builder(record)`` -> a prompt string.

    Args:
        modality: e.g. ``"brain mri"``, ``"chest x-ray"``.
        subject: the noun, e.g. ``"brain"``; a DreamBooth identifier goes in front (``"sks brain"``).
        templates: ``simple`` (one template) or ``diverse`` (twenty), drawn at random per call.
        fields: patient fields to include, a subset of ``FIELDS`` (empty: no patient information).
        age_style: ``word`` or ``numerical`` for one scan's age; for the age difference of an
            :meth:`instruction`, also ``binned`` (see :func:`render_age_difference`).
        seed: random source of the diverse templates, so that a run's prompts reproduce.
    """

    def __init__(self, modality: str = "brain mri", subject: str = "brain", templates: str = "simple",
                 fields: tuple[str, ...] = (), age_style: str = "numerical", seed: int = 0) -> None:
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

    def _check(self, record: Mapping, fields: tuple[str, ...]) -> None:
        for f in fields:
            if record.get(f) in (None, ""):
                raise LdmonaiError(f"the record has no {f!r}", record.get("image"),
                                   f"add a {f} column to the slice index or drop {f!r} from the prompt fields")

    def subject_phrase(self, record: Mapping | None = None, with_age: bool = True) -> str:
        """The subject with the patient information, e.g.
        "seventy-seven year old female brain with mild cognitive impairment"."""
        record = record or {}
        self._check(record, self.fields if with_age else tuple(f for f in self.fields if f != "age"))
        words = []
        if "age" in self.fields and with_age:
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
        """An InstructPix2Pix edit instruction from the source scan to the target scan.

        The age enters as the difference between the two (:func:`render_age_difference`); the
        other fields describe the source, and the target where they change, e.g. "make this
        female brain seven years older" or "make this brain moderately older, as a brain with
        mild cognitive impairment".
        """
        text = f"make this {self.subject_phrase(source, with_age=False)}"
        if "age" in self.fields:
            self._check(source, ("age",))
            self._check(target, ("age",))
            text += f" {render_age_difference(source['age'], target['age'], self.age_style)}"
        after = self.subject_phrase(target, with_age=False)
        if after != self.subject_phrase(source, with_age=False):
            text += f", as a {after}"
        return text

    def vocabulary(self) -> list[str]:
        """Every word these prompts can use, for the toolkit's own word-level text encoder."""
        words = set()
        for t in self.templates:
            words.update(t.replace(",", " , ").replace("{modality}", self.modality).replace("{subject}", self.subject).split())
        words.update("slightly moderately significantly old older younger year years the same female male with make "
                     "this as ,".split())
        for a in range(130):
            words.update(age_in_words(a).split())
        for dx in DIAGNOSES.values():
            words.update(dx.split())
        words.update(str(a) for a in range(130))
        return sorted(words)
