"""Find and redact personal data in text and in JSON-like values.

Kinds: `email`, `phone`, `card` (payment card numbers, Luhn-checked), `iban` (ISO 13616, mod-97
checked) and `national_id` (US social security numbers in the dashed form). Candidates are found
with patterns; checksums and numbering rules come from maintained libraries (`phonenumbers` for
phones, `python-stdnum` for Luhn, IBAN and SSN), so a sales figure or an order number with a
wrong check digit is not mistaken for a card.

Used by the auditor (audit records and outcomes hold redacted copies), the router (a step whose
inputs hold personal data is routed as `pii`) and, through `shared.governance.boundaries`, the
executor (what goes to a model or a web-facing tool is redacted to what it is cleared for).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import phonenumbers
from phonenumbers import phonenumbermatcher as _phonenumbermatcher
from phonenumbers import phonenumberutil as _phonenumberutil
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.us import ssn as stdnum_ssn

PiiKind = Literal["email", "phone", "card", "iban", "national_id"]
KINDS: tuple[PiiKind, ...] = ("card", "iban", "national_id", "email", "phone")
"""Every kind, in the order that wins when two findings overlap."""
ALL_PII = "pii"
"""A data class that allows every kind (e.g. for a local model approved for personal data)."""
PHONE_REGIONS: tuple[str, ...] = ("US",)
"""Regions whose national phone formats are recognised; international (+…) numbers always are."""
FINDINGS_CACHED = 8192
"""Texts whose findings are remembered. The same strings are checked again and again: a step's
routing reason in every goal, each payload string by the policy check and then by redaction."""

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![\w-])")
# not inside a longer word: a hex id ("goal-3f0412345678901234ab") is not a card
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w])")
# compact, or printed in groups of four: the groups keep a following word out of the match
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")


@dataclass(frozen=True, order=True)
class Finding:
    """One piece of personal data in a text: its kind and where it is (`text[start:end]`)."""

    start: int
    end: int
    kind: PiiKind

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end


def _cards(text: str) -> Iterable[Finding]:
    for match in _CARD.finditer(text):
        # the longest run may swallow a following number ("4111 1111 1111 1111 12"): try the
        # run, then shorter runs that end at a separator
        candidate = match.group()
        ends = [len(candidate)] + [m.start() for m in reversed(list(re.finditer(r"[ -]", candidate)))]
        for end in ends:
            digits = re.sub(r"[ -]", "", candidate[:end])
            if 13 <= len(digits) <= 19 and luhn.is_valid(digits):
                yield Finding(match.start(), match.start() + end, "card")
                break


def _ibans(text: str) -> Iterable[Finding]:
    for match in _IBAN.finditer(text):
        if stdnum_iban.is_valid(match.group()):
            yield Finding(match.start(), match.end(), "iban")


def _national_ids(text: str) -> Iterable[Finding]:
    for match in _SSN.finditer(text):
        if stdnum_ssn.is_valid(match.group()):
            yield Finding(match.start(), match.end(), "national_id")


def _emails(text: str) -> Iterable[Finding]:
    for match in _EMAIL.finditer(text):
        yield Finding(match.start(), match.end(), "email")


# phonenumbers' matcher finds numbers only within runs of digits, its punctuation, plus signs
# and brackets (no letters: it does not read vanity numbers)
try:  # the library's own character-class fragments; private, so a release may rename them
    _PHONE_RUN: re.Pattern[str] | None = re.compile(
        "[" + _phonenumberutil._VALID_PUNCTUATION + _phonenumberutil._PLUS_CHARS
        + _phonenumbermatcher._OPENING_PARENS + _phonenumbermatcher._CLOSING_PARENS + "\\d]+"
    )
except AttributeError:  # then every text goes to the matcher, as before the pre-check
    _PHONE_RUN = None
MIN_INTERNATIONAL_PHONE_DIGITS = 6
"""The fewest digits of a valid number written with its country code (Austria, Germany and Iran
have 4-digit numbers behind a 2-digit code); a unit test checks it against phonenumbers' data."""


def _fewest_unprefixed_digits(regions: Iterable[str]) -> int:
    """The fewest digits of a valid number written without a plus, in the regions' own format or
    behind their international dialling prefix (011 in the US)."""
    fewest = []
    for region in regions:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        national = min((n for n in metadata.general_desc.possible_length if n > 0), default=1)
        prefix = metadata.international_prefix or ""
        fewest.append(min(national, (len(prefix) if prefix.isdigit() else 0) + MIN_INTERNATIONAL_PHONE_DIGITS))
    return min(fewest, default=1)


_MIN_UNPREFIXED_PHONE_DIGITS = _fewest_unprefixed_digits(PHONE_REGIONS)


def _may_hold_phone(text: str) -> bool:
    """False when no run of the text has the digits of a valid number. The matcher costs about
    0.1 ms per text, and ids, timestamps and trace ids (7 or more digits, so past
    `_may_hold_pii`) are checked in every event by the auditor: their runs hold 8 digits at most."""
    if _PHONE_RUN is None:
        return True
    for run in _PHONE_RUN.findall(text):
        digits = sum(map(str.isdigit, run))
        plus = "+" in run or "＋" in run
        if digits >= MIN_INTERNATIONAL_PHONE_DIGITS and (plus or digits >= _MIN_UNPREFIXED_PHONE_DIGITS):
            return True
    return False


def _phones(text: str) -> Iterable[Finding]:
    # Leniency.VALID: the number must be a real number plan entry, not just digits that parse
    if not _may_hold_phone(text):
        return
    for region in PHONE_REGIONS:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            # a bare run of digits is more often an order or account number than a phone
            if not match.raw_string.isdigit():
                yield Finding(match.start, match.end, "phone")


_DETECTORS = {
    "card": _cards,
    "iban": _ibans,
    "national_id": _national_ids,
    "email": _emails,
    "phone": _phones,
}


def _kinds(allowed_classes: Iterable[str]) -> tuple[PiiKind, ...]:
    allowed = set(allowed_classes)
    if ALL_PII in allowed:
        return ()
    return tuple(kind for kind in KINDS if kind not in allowed)


def detect(text: str, allowed_classes: Iterable[str] = ()) -> list[Finding]:
    """Every piece of personal data in `text` whose kind is not allowed, in text order.

    When findings overlap (a card number also parses as a phone number) the kind earlier in
    `KINDS` wins.
    """
    return list(_findings(text, _kinds(allowed_classes)))


@lru_cache(maxsize=FINDINGS_CACHED)
def _findings(text: str, kinds: tuple[PiiKind, ...]) -> tuple[Finding, ...]:
    # a pure function of its arguments (the phone parser alone costs up to 0.2 ms per text)
    kept: list[Finding] = []
    for kind in kinds:
        if kind == "email" and "@" not in text:
            continue
        for finding in _DETECTORS[kind](text):
            if not any(finding.start < k.end and k.start < finding.end for k in kept):
                kept.append(finding)
    return tuple(sorted(kept))


def redact_text(text: str, allowed_classes: Iterable[str] = ()) -> tuple[str, list[Finding]]:
    """`text` with each finding replaced by `[REDACTED:<kind>]`, and the findings (spans refer to
    the original text)."""
    findings = detect(text, allowed_classes)
    return _replaced(text, findings), findings


def _replaced(text: str, findings: Iterable[Finding]) -> str:
    parts: list[str] = []
    position = 0
    for finding in findings:
        parts.append(text[position:finding.start])
        parts.append(f"[REDACTED:{finding.kind}]")
        position = finding.end
    parts.append(text[position:])
    return "".join(parts)


def redact(text: str, allowed_classes: Iterable[str] = ()) -> str:
    return redact_text(text, allowed_classes)[0]


def redact_value(value: Any, allowed_classes: Iterable[str] = ()) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, strings, numbers) with every string
    redacted, recursively. Keys are kept; non-string leaves are returned as they are.

    `allowed_classes` are data classes that may pass unredacted: kinds from `KINDS`, or `"pii"`
    for all of them (e.g. a step's `data_classes` when its model is approved for personal data).
    """
    kinds = _kinds(allowed_classes)
    if not kinds:
        return value
    return _redact(value, kinds)


def _redact(value: Any, kinds: tuple[PiiKind, ...]) -> Any:
    # the auditor walks every event's payload: the common types are checked first and without
    # the ABC machinery, and a string is copied only when it holds something to redact
    if isinstance(value, str):
        if not _may_hold_pii(value):
            return value
        findings = _findings(value, kinds)
        return _replaced(value, findings) if findings else value
    if isinstance(value, dict) or isinstance(value, Mapping):
        return {key: _redact(item, kinds) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(item, kinds) for item in value]
    return value


def _may_hold_pii(text: str) -> bool:
    # every kind needs an @ or at least a few digits: skip the phone parser on plain prose
    return "@" in text or (len(text) >= 7 and sum(map(str.isdigit, text)) >= 7)  # map: C speed, every event


def find_in_value(value: Any, allowed_classes: Iterable[str] = (), path: str = "$") -> list[tuple[str, Finding]]:
    """(JSON path, finding) for every piece of personal data in a JSON-like value."""
    if isinstance(value, str):
        return [(path, f) for f in detect(value, allowed_classes)] if _may_hold_pii(value) else []
    found: list[tuple[str, Finding]] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            found.extend(find_in_value(item, allowed_classes, f"{path}.{key}"))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found.extend(find_in_value(item, allowed_classes, f"{path}[{index}]"))
    return found
