"""PII redaction: typed placeholders, checksums against false positives, counts per kind."""

from __future__ import annotations

import pytest

from kubetune.trainer.data.redact import KINDS, Redactor


@pytest.mark.parametrize(
    "kind, text, expected",
    [
        ("email", "write to jane.doe+x@mail.example.co.uk today", "write to <EMAIL> today"),
        ("phone", "call +1 415-555-0132 or (415) 555 0132.", "call <PHONE> or <PHONE>."),
        ("credit-card", "card 4111 1111 1111 1111 ok", "card <CREDIT_CARD> ok"),
        ("ipv4", "host 192.168.1.20, not 1.2.3.4.5", "host <IPV4>, not 1.2.3.4.5"),
        ("ipv6", "addr fe80::1ff:fe23:4567:890a and 2001:db8::1", "addr <IPV6> and <IPV6>"),
        ("iban", "IBAN DE89 3704 0044 0532 0130 00.", "IBAN <IBAN>."),
        ("us-ssn", "SSN 123-45-6789", "SSN <US_SSN>"),
        ("url", "see https://example.com/a?b=c. Or www.example.org", "see <URL>. Or <URL>"),
    ],
)
def test_each_kind_is_replaced_and_counted(kind, text, expected):
    redactor = Redactor([kind])
    assert redactor(text) == expected
    assert redactor.counts[kind] == expected.count("<")


@pytest.mark.parametrize(
    "kind, text",
    [
        ("credit-card", "order 4111 1111 1111 1112 fails Luhn"),
        ("iban", "DE89 3704 0044 0532 0130 01 fails mod 97"),
        ("phone", "on 2023-01-05, 350 000 people, pi is 3.14159, in 1984"),
        ("us-ssn", "000-12-3456 is not issued"),
        ("ipv4", "version 10.2.300.1"),
    ],
)
def test_lookalikes_are_left_alone(kind, text):
    redactor = Redactor([kind])
    assert redactor(text) == text
    assert not redactor.counts


def test_only_chosen_kinds_run_in_a_fixed_order():
    text = "mail me at bob@example.com via https://bob.example.com/contact"
    assert Redactor(["email"])(text) == "mail me at <EMAIL> via https://bob.example.com/contact"
    both = Redactor(["email", "url"])
    assert both(text) == "mail me at <EMAIL> via <URL>"
    assert list(KINDS)[:2] == ["url", "email"]


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown redaction kinds"):
        Redactor(["passport"])
