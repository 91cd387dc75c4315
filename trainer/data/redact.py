"""PII redaction: typed placeholders for personal data, before tokenization.

Redacting identifiers before training is the practice data-security guidance
recommends for fine-tuning on sensitive text: a model can memorise and regurgitate
what it was trained on. Each kind is a regular expression; the ones with a checksum
(credit-card numbers: Luhn; IBANs: ISO 13616 mod 97) are confirmed by it, so order
numbers and dates are not taken for card numbers. Matches become `<EMAIL>`,
`<PHONE>`, ... and are counted per kind for the report.

This is pattern matching, not named-entity recognition: names and street addresses
are not found. Kinds run in a fixed order (URLs before e-mails, e-mails before phone
numbers, ...) so that the more specific pattern claims a span first.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_H16 = r"[0-9A-Fa-f]{1,4}"


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _credit_card(match: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", match.group())
    return 13 <= len(digits) <= 19 and _luhn(digits)


def _iban(match: re.Match[str]) -> bool:
    text = re.sub(r"\s", "", match.group()).upper()
    rearranged = text[4:] + text[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


_DATE = re.compile(r"\d{4}([-./])\d{1,2}\1\d{1,2}|\d{1,2}([-./])\d{1,2}\2\d{2,4}")


def _phone(match: re.Match[str]) -> bool:
    text = match.group()
    if _DATE.fullmatch(text):
        return False
    digits = sum(ch.isdigit() for ch in text)
    separated = text.startswith("+") or "(" in text or len(re.findall(r"[ .-]", text)) >= 2
    return 7 <= digits <= 15 and separated


@dataclass(frozen=True)
class _Kind:
    placeholder: str
    pattern: re.Pattern[str]
    confirm: Callable[[re.Match[str]], bool] | None = None


# In the order they are applied.
KINDS: dict[str, _Kind] = {
    "url": _Kind("<URL>", re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)\]}]")),
    "email": _Kind(
        "<EMAIL>",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    ),
    "iban": _Kind(
        "<IBAN>", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), _iban
    ),
    "credit-card": _Kind("<CREDIT_CARD>", re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), _credit_card),
    "us-ssn": _Kind(
        "<US_SSN>", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
    ),
    "ipv6": _Kind(
        "<IPV6>",
        re.compile(
            rf"(?<![\w:])(?:(?:{_H16}:){{7}}{_H16}|(?:{_H16}:){{1,7}}:(?:{_H16}(?::{_H16}){{0,6}})?|::(?:{_H16}(?::{_H16}){{0,6}}))(?![\w:])"
        ),
    ),
    "ipv4": _Kind("<IPV4>", re.compile(rf"(?<![\d.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\d.])")),
    "phone": _Kind(
        "<PHONE>",
        # +CC, optional area code in parentheses, groups separated by space, dot or dash;
        # at least 7 digits, and a separator or a + so that plain numbers are left alone.
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w-])"
        ),
        _phone,
    ),
}


class Redactor:
    """Replaces the chosen kinds of personal data; counts what it replaced."""

    def __init__(self, kinds: Iterable[str]):
        chosen = set(kinds)
        unknown = chosen - set(KINDS)
        if unknown:
            raise ValueError(
                f"unknown redaction kinds {sorted(unknown)}; known: {', '.join(KINDS)}"
            )
        self.kinds = [(name, kind) for name, kind in KINDS.items() if name in chosen]
        self.counts: Counter[str] = Counter()

    def __bool__(self) -> bool:
        return bool(self.kinds)

    def __call__(self, text: str) -> str:
        for name, kind in self.kinds:
            text = kind.pattern.sub(functools.partial(self._replace, name=name, kind=kind), text)
        return text

    def _replace(self, match: re.Match[str], name: str, kind: _Kind) -> str:
        if kind.confirm is not None and not kind.confirm(match):
            return match.group()
        self.counts[name] += 1
        return kind.placeholder
