"""What may go into a leaf certificate's names: DNS names and subject attribute values.

The rules are the ones RFC 5280 sets and pkilint checks, so a profile that passes them
yields certificates pkilint accepts:

* DNS names (subjectAltName dNSName) in the preferred name syntax of RFC 1034 section 3.5 as
  RFC 5280 section 4.2.1.6 requires (RFC 1123 lets a label start with a digit): labels of
  letters, digits and ``-``, not starting or ending with ``-``, at most 63 characters; at
  least two labels; 253 characters at most. The last label is at least two characters and
  ends with a letter, so an IP address is never taken for a DNS name. No wildcards, no
  trailing dot, no underscores. Internationalised names are accepted in their A-label form
  only (``xn--``, checked to decode): fleet does not convert U-labels (``dév.example``),
  it refuses them, because the conversion rules (IDNA 2003 or 2008, UTS 46 mapping) differ
  between tools and a certificate must name exactly what the device's peers look up.
* Subject attribute values within the X.520 upper bounds (RFC 5280 appendix A), printable
  (no control, format, private-use or unassigned characters), no leading or trailing
  spaces; the country an ISO 3166-1 alpha-2 code in capitals.
"""

from __future__ import annotations

import re
import unicodedata

DNS_NAME_MAX = 253
DNS_LABEL_MAX = 63
# X.520 upper bounds (ub-organization-name 64, ub-organizational-unit-name 64,
# ub-state-name 128, ub-locality-name 128); country is exactly two characters.
SUBJECT_UPPER_BOUNDS = {
    "organization": 64,
    "organizational_unit": 64,
    "country": 2,
    "state": 128,
    "locality": 128,
}
# ISO 3166-1 alpha-2, officially assigned codes.
COUNTRY_CODES = frozenset(
    re.findall(
        r"[A-Z]{2}",
        """AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO
    DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU
    GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW
    KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU
    MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW
    PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF
    TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA
    ZM ZW""",
    )
)
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# Control, format, surrogate, private use, unassigned; line and paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def dns_name_problem(name: str) -> str | None:
    """Why ``name`` is not a DNS name fleet puts in a certificate, or ``None`` if it is."""
    if not name:
        return "is empty"
    if not name.isascii():
        return "has non-ASCII characters; write internationalised labels as A-labels (xn--...)"
    if len(name) > DNS_NAME_MAX:
        return f"is {len(name)} characters long; the limit is {DNS_NAME_MAX}"
    labels = name.split(".")
    if len(labels) < 2:
        return "needs at least two labels (a single-label name such as 'localhost' is refused)"
    for label in labels:
        if problem := _label_problem(label):
            return problem
    last = labels[-1]
    if len(last) < 2 or not last[-1].isalpha():
        return (
            f"has the last label {last!r}, which must be at least two characters and end with "
            "a letter (IP addresses are not DNS names)"
        )
    return None


def _label_problem(label: str) -> str | None:
    if not label:
        return "has an empty label (two dots in a row, or a leading or trailing dot)"
    if len(label) > DNS_LABEL_MAX:
        return f"has a label of {len(label)} characters; the limit is {DNS_LABEL_MAX}"
    if not _LABEL_RE.match(label):
        return (
            f"has the label {label!r}: labels are letters, digits and '-', "
            "neither starting nor ending with '-' (no wildcards, no '_')"
        )
    if label[2:4] == "--":
        if label[:4].lower() != "xn--":
            return f"has the label {label!r}: '--' in third and fourth place is reserved"
        try:
            decoded = label[4:].encode("ascii").decode("punycode")
        except UnicodeError:
            decoded = ""
        if not decoded or decoded.isascii():
            return f"has the label {label!r}, which is not a valid A-label"
    return None


def subject_value_problem(field: str, value: str) -> str | None:
    """Why ``value`` cannot be the subject attribute ``field`` (a key of
    :data:`SUBJECT_UPPER_BOUNDS`), or ``None`` if it can."""
    if not value:
        return "is empty"
    if field == "country":
        if value not in COUNTRY_CODES:
            return f"{value!r} is not an ISO 3166-1 alpha-2 country code (two capitals, e.g. DE)"
        return None
    limit = SUBJECT_UPPER_BOUNDS[field]
    if len(value) > limit:
        return f"is {len(value)} characters long; the limit (X.520) is {limit}"
    if any(unicodedata.category(c) in _UNPRINTABLE for c in value):
        return "contains control or other unprintable characters"
    if value != value.strip():
        return "starts or ends with white space"
    return None
