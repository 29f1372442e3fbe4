"""Phone numbers: parsing to E.164, and the policy that refuses costly or unreachable numbers."""

from __future__ import annotations

import phonenumbers
import pytest
from phonenumbers import PhoneNumberType

from ivr import phone
from ivr.phone import NumberPolicy, NumberRefused, parse

US_NUMBER = "+14155550123"
GB_FIXED_LINE = "+442079460018"
GB_MOBILE = "+447400123456"

# Regions tried first for an example number of a type; GB has most of the refused kinds.
PREFERRED_REGIONS = ("GB", "CH", "DE", "FR", "IE")


def example_of(number_type):
    """A real example number of `number_type` that parse() classifies as that type."""
    others = sorted(phonenumbers.SUPPORTED_REGIONS - set(PREFERRED_REGIONS))
    for region in (*PREFERRED_REGIONS, *others):
        example = phonenumbers.example_number_for_type(region, number_type)
        if example is None:
            continue
        e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
        number = parse(e164)
        if number.number_type == number_type:
            return number
    raise AssertionError(f"no region has an example number of type {number_type}")


def refusal(call, *args):
    with pytest.raises(NumberRefused) as caught:
        call(*args)
    return caught.value


# Parsing


def test_an_e164_number_is_parsed():
    number = parse(US_NUMBER)
    assert number.e164 == US_NUMBER
    assert number.country == "US"


def test_formatting_around_an_international_number_is_ignored():
    assert parse("+1 (415) 555-0123").e164 == US_NUMBER
    assert parse("  +44 20 7946 0018 ").e164 == GB_FIXED_LINE


def test_a_national_number_is_parsed_with_a_country_hint():
    number = parse("020 7946 0018", "GB")
    assert number.e164 == GB_FIXED_LINE
    assert number.country == "GB"
    assert number.number_type == PhoneNumberType.FIXED_LINE


def test_the_country_hint_is_case_insensitive():
    assert parse("(415) 555-0123", "us").e164 == US_NUMBER


def test_an_e164_number_ignores_the_country_hint():
    assert parse(US_NUMBER, "GB").e164 == US_NUMBER


def test_a_national_number_without_a_country_hint_is_refused_with_advice():
    refused = refusal(parse, "4155550123")
    assert refused.reason == "invalid_number"
    assert "country" in refused.detail


@pytest.mark.parametrize("raw", [" 14155550123", " 1 415 555 0123", "  442079460018"])
def test_a_leading_space_for_a_plus_is_blamed_on_form_encoding(raw):
    refused = refusal(parse, raw)
    assert refused.reason == "invalid_number"
    assert "what a '+' becomes in a form-encoded body" in refused.detail
    assert "%2B" in refused.detail


@pytest.mark.parametrize(
    "raw",
    [
        "hello",
        "+1",
        "+1415555012",  # one digit short
        "+999123456789",  # no such country code
        "",
        "   ",
        "+1 415 555 0123 ext. 12345678901234567890123456789012345678901234567890",
        "+" + "1" * 200,
        "1" * 10_000,
    ],
)
def test_an_invalid_string_is_refused_as_invalid_number(raw):
    refused = refusal(parse, raw)
    assert refused.reason == "invalid_number"
    assert str(refused) == refused.detail


@pytest.mark.parametrize("raw", [None, 14155550123, 4.2, b"+14155550123", ["+14155550123"], {}])
def test_a_non_string_is_refused_as_invalid_number(raw):
    assert refusal(parse, raw).reason == "invalid_number"


@pytest.mark.parametrize("hint", ["XX", "USA", "", "U", 1, ["US"], "zz"])
def test_a_bad_country_hint_is_refused_as_invalid_country(hint):
    assert refusal(parse, "020 7946 0018", hint).reason == "invalid_country"


def test_number_refused_is_a_value_error():
    assert issubclass(NumberRefused, ValueError)


def test_the_prefix_strips_the_last_four_digits():
    number = parse(US_NUMBER)
    assert number.prefix == "+1415555"
    assert parse("+14155559999").prefix == number.prefix


# The number policy


@pytest.mark.parametrize(
    "number_type",
    [
        PhoneNumberType.PREMIUM_RATE,
        PhoneNumberType.SHARED_COST,
        PhoneNumberType.UAN,
        PhoneNumberType.PAGER,
        PhoneNumberType.VOICEMAIL,
        PhoneNumberType.PERSONAL_NUMBER,
    ],
    ids=["premium_rate", "shared_cost", "uan", "pager", "voicemail", "personal_number"],
)
@pytest.mark.parametrize("channel", ["call", "sms"])
def test_a_costly_or_unreachable_number_type_is_refused(number_type, channel):
    number = example_of(number_type)
    policy = NumberPolicy(allowed_countries={number.country})
    refused = refusal(policy.check, number, channel)
    assert refused.reason == "number_type_refused"
    assert refused.detail


def test_premium_rate_refusal_explains_the_toll_fraud_risk():
    number = parse("+449012345678")
    assert number.number_type == PhoneNumberType.PREMIUM_RATE
    refused = refusal(NumberPolicy({"GB"}).check, number, "call")
    assert "premium" in refused.detail


def test_a_refused_type_is_refused_even_when_every_country_is_allowed():
    number = example_of(PhoneNumberType.PREMIUM_RATE)
    assert refusal(NumberPolicy({"*"}).check, number, "call").reason == "number_type_refused"


def test_a_country_outside_allowed_countries_is_refused():
    refused = refusal(NumberPolicy({"US", "CA"}).check, parse(GB_MOBILE), "call")
    assert refused.reason == "country_not_allowed"
    assert "GB" in refused.detail


def test_a_star_allows_every_country():
    number = parse("+81312345678")  # Tokyo
    assert number.country == "JP"
    assert NumberPolicy({"*"}).check(number, "call") is number


def test_a_number_in_an_allowed_country_passes():
    number = parse(GB_MOBILE)
    assert NumberPolicy({"GB"}).check(number, "sms") is number
    assert NumberPolicy({"GB"}).check(number, "call") is number


def test_sms_to_a_landline_is_refused():
    number = parse(GB_FIXED_LINE)
    assert number.is_fixed_line
    refused = refusal(NumberPolicy({"GB"}).check, number, "sms")
    assert refused.reason == "channel_unsupported"


def test_a_call_to_a_landline_is_allowed():
    number = parse(GB_FIXED_LINE)
    assert NumberPolicy({"GB"}).check(number, "call") is number


def test_sms_to_a_number_that_may_be_mobile_is_allowed():
    number = parse(US_NUMBER)
    assert number.number_type == PhoneNumberType.FIXED_LINE_OR_MOBILE
    assert not number.is_fixed_line
    assert NumberPolicy({"US"}).check(number, "sms") is number


def test_the_country_is_checked_before_the_number_type():
    number = example_of(PhoneNumberType.PREMIUM_RATE)
    others = {"US"} if number.country != "US" else {"CA"}
    assert refusal(NumberPolicy(others).check, number, "call").reason == "country_not_allowed"


@pytest.mark.parametrize(
    ("caller_id", "country"),
    [
        ("+14155550123", "US"),
        ("+34612345678", "ES"),
        ("+447700900123", "GB"),
        ("anonymous", None),
        ("", None),
        ("+", None),
        (None, None),
        ("+999123", None),
        ("4155550123", None),
        ("+1" + "5" * 40, None),
    ],
)
def test_country_of_caller_needs_only_the_calling_code(caller_id, country):
    assert phone.country_of_caller(caller_id) == country
