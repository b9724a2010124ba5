"""Secret and PII detectors for free text: whatever matches becomes ``[REDACTED:<kind>]``.

Reads: any text (a path, a query, SQL, a topic, a header line, JSON). Emits: the same text with every detected value
replaced, and the kinds that were found (for metrics; never the values).

One combined, precompiled regular expression holds every detector as an alternative (one pass over the text); a
detector whose shape alone is not evidence (cards, IBANs, phone numbers, generic ``key=`` assignments, IPv6) adds a
validator (Luhn, ISO 13616 mod-97, digit counts, entropy). When a candidate fails its validator, the next detectors
are tried at the same place, then the search resumes one character later; so a control such as a 16-digit number
failing Luhn stays as it is. At each place the first detector (in ``DETECTORS`` order) that matches and validates wins.

Streaming. ``StreamScanner`` redacts a text that arrives in segments (a TCP payload, a request body) and gives, for any
way the byte stream is cut, exactly ``redact(whole_text)`` once closed: every detector has a bounded length, so a
match that starts ``window`` characters before the end of the buffered text is already decided and can be emitted;
text closer to the end is held back until more arrives. Short detectors bound the hold-back to ``SHORT_WINDOW``; the
few long ones (PEM keys, JWTs, header lines) only exist where their anchor text occurs, so they hold back more text only
when their anchor is in the tail.
"""

from __future__ import annotations

import codecs
import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: Left boundary for detectors that must not start inside a word, allowing a percent-escape just before (``%3D``).
_L = r"(?:(?<![A-Za-z0-9_])|(?<=%[0-9A-Fa-f]{2}))"
#: Characters a token-shaped secret is made of.
_TOK = r"[A-Za-z0-9_-]"

Validator = Callable[[str], "int | None"]


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind of secret or PII. ``pattern`` may name a group ``v``: then only that span is replaced.

    ``first`` is a character class body; ``max_len`` bounds what the pattern can read (match plus look-around),
    which the streaming scanner relies on; ``anchor`` (a regex) is set for long detectors: every match starts with
    it. ``validate`` gets the matched text and returns the length of the part that is a true positive (``None``:
    not one). ``group`` places the detector under one shared guard in the combined expression.
    """

    kind: str
    #: The characters a match can start with (a cheap guard that lets the engine skip a detector at most places).
    first: str
    pattern: str
    max_len: int
    validate: Validator | None = None
    anchor: str = ""
    group: str = "word"


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(text: str) -> int | None:
    """A card number passes Luhn; a grouped run may carry a trailing group that is not part of it (``… 2024``)."""
    groups = [(m.group(), m.end()) for m in _DIGITS.finditer(text.replace("%20", "   "))]
    while groups:
        digits = "".join(g for g, _end in groups)
        if len(digits) < 13:
            return None
        if _issuer_length_ok(digits) and _luhn_ok(digits):
            return groups[-1][1]
        groups.pop()
    return None


_DIGITS = re.compile(r"[0-9]+")


def _issuer_length_ok(d: str) -> bool:
    """Issuer prefix and length of the major networks; halves the false positives Luhn alone lets through."""
    n = len(d)
    if d[0] == "4":
        return n in (13, 16, 19)
    if "51" <= d[:2] <= "55" or "2221" <= d[:4] <= "2720":
        return n == 16
    if d[:2] in ("34", "37"):
        return n == 15
    if d[:4] == "6011" or d[:2] in ("62", "65") or "644" <= d[:3] <= "649" or d[:2] == "35":
        return 16 <= n <= 19
    if "300" <= d[:3] <= "305" or d[:2] in ("36", "38", "39"):
        return 14 <= n <= 19
    return False


#: IBAN lengths per country (ISO 13616 registry, common countries).
_IBAN_LEN: Final = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18,
    "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27,
    "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26,
    "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def _iban(text: str) -> int | None:
    compact = text.replace("%20", "").replace(" ", "").upper()
    if _IBAN_LEN.get(compact[:2]) != len(compact):
        return None
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return len(text) if int(number) % 97 == 1 else None


_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def _digit_count(lo: int, hi: int) -> Validator:
    def check(text: str) -> int | None:
        n = sum(c.isdigit() for c in _ESCAPE.sub("", text))
        return len(text) if lo <= n <= hi else None

    return check


def _ipv6(text: str) -> int | None:
    if "::" not in text and text.count(":") != 7:
        return None
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return None
    return len(text)


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(text)
    counts: dict[str, int] = {}
    for ch in text:
        counts[ch] = counts.get(ch, 0) + 1
    return -sum(c / n * math.log2(c / n) for c in counts.values())


_ASSIGN_RE = re.compile(
    r"(?P<name>[A-Za-z0-9_.-]*)(?P<sep>[\"']?\s{0,3}(?:=|:|%3[Dd])\s{0,3}[\"']?)(?P<v>.*)", re.DOTALL
)
_SECRET_NAME = re.compile(
    r"(?i)api[_.-]?key|apikey|access[_.-]?key|secret|token|passw(?:or)?d|pwd|credential|private[_.-]?key|auth"
)
_WEAK_NAME = re.compile(r"(?i)pass|pwd|secret|credential|private")
#: A (dotted) identifier in snake_case or UPPER_CASE without digits: how code and SQL name things, not how keys look.
_IDENTIFIER = re.compile(r"(?:[A-Za-z_][a-z_]*|[A-Z_]+)(?:\.(?:[A-Za-z_][a-z_]*|[A-Z_]+))*")


def _assignment(text: str) -> int | None:
    """``password=…``/``secret=…``: any value of 4+ characters; ``key=``/``token=``: only a high-entropy value
    (``sort_key=created_at`` is a field name, ``api_key=Zx81…`` is a key)."""
    m = _ASSIGN_RE.match(text)
    if m is None:
        return None
    value = m.group("v")
    if _SECRET_NAME.search(m.group("name")) is None:
        return None
    if value.startswith("[REDACTED") or value.startswith("{"):
        return None
    name = m.group("name")
    if "." in value and value.lower().rsplit(".", 1)[1] == name.lower():
        return None  # ``password = EXCLUDED.password``: a column reference (SQL upserts, joins), not a value
    if _WEAK_NAME.search(name):
        return len(text) if len(value) >= 4 else None
    if _IDENTIFIER.fullmatch(value) and ("." in value or "_" in value):
        return None  # ``tokens_in = c.tokens_in + …``, ``api_key: settings.api_key``: names, not values
    classes = sum(
        (any(c.islower() for c in value), any(c.isupper() for c in value), any(c.isdigit() for c in value))
    ) + any(not c.isalnum() for c in value)
    if len(value) >= 10 and classes >= 2 and entropy(value) >= 3.0:
        return len(text)
    return None


def _token_like(text: str) -> int | None:
    """``Bearer …``/``Basic …``: the value must look like a credential (``basic settings`` is prose)."""
    value = text.split(None, 1)[-1] if " " in text else text.rsplit("+", 1)[-1]
    mixed = any(c.islower() for c in value) and any(c.isupper() for c in value)
    return len(text) if mixed or any(c.isdigit() for c in value) or value.endswith("=") else None


def _nb(chars: str) -> str:
    """Left boundary: not after ``chars``, except right after a percent-escape (``%20``, ``%3D``)."""
    return rf"(?:(?<![{chars}])|(?<=%[0-9A-Fa-f]{{2}}))"


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_SEP = r"(?:[ .-]|%20)"
_OPEN = r"(?:\(|%28)"
_CLOSE = r"(?:\)|%29)"

#: The detectors, in priority order for matches that start at the same place, in three groups: ``anywhere`` (a
#: literal prefix, may start inside a word), ``word`` (starts where a word starts), ``digit`` (starts with a digit,
#: ``+`` or ``(``). Each group has one guard in the combined expression, so most positions cost a few checks.
DETECTORS: Final[tuple[Detector, ...]] = (
    Detector(
        "private_key",
        "-",
        r"-----BEGIN(?:[ A-Z0-9+]|%20){0,30}PRIVATE(?: |%20|\+)KEY-----"
        r"(?:[A-Za-z0-9+/=\s\\:,.%-]{0,6000}?-----END(?:[ A-Z0-9+]|%20){0,30}PRIVATE(?: |%20|\+)KEY-----"
        r"|[A-Za-z0-9+/=\s\\:,.%-]{0,6000})",
        6300,
        anchor=r"-----BEGIN",
        group="anywhere",
    ),
    Detector(
        "jwt",
        "e",
        r"eyJ[A-Za-z0-9_-]{5,3000}\.[A-Za-z0-9_-]{2,6000}\.[A-Za-z0-9_-]{0,2000}",
        11100,
        anchor=r"eyJ",
        group="anywhere",
    ),
    Detector(
        "url_credentials",
        ":%",
        r"(?:://|%3[Aa]%2[Ff]%2[Ff])(?P<v>[^\s/:@%?#]{1,128}(?::|%3[Aa])[^\s/@?#]{1,256}?)(?=@|%40)",
        410,
        group="anywhere",
    ),
    Detector(
        "slack_webhook",
        "h",
        r"hooks\.slack\.com(?:/|%2[Ff])(?:services|workflows|triggers)(?:/|%2[Ff])[A-Za-z0-9_/+%-]{8,300}",
        340,
        group="anywhere",
    ),
    Detector("anthropic_key", "s", r"sk-ant-" + _TOK + r"{20,400}", 410, group="anywhere"),
    Detector(
        "github_token",
        "g",
        r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})",
        270,
        group="anywhere",
    ),
    Detector("slack_token", "x", r"(?:xox[abposr]|xapp)-[A-Za-z0-9-]{10,250}", 260, group="anywhere"),
    Detector(
        "stripe_key",
        "sprw",
        r"(?:[spr]k_(?:live|test)_[A-Za-z0-9]{10,250}|whsec_[A-Za-z0-9]{20,250})",
        270,
        group="anywhere",
    ),
    Detector(
        "aws_access_key",
        "A",
        r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}(?![A-Za-z0-9])",
        24,
        group="anywhere",
    ),
    Detector(
        "auth_header",
        "PpAaSsCcXx",
        r"(?i:(?<![A-Za-z0-9-])(?:proxy-authorization|authorization|set-cookie|cookie|x-api-key|api-key|x-auth-token)"
        r"[\"']?\s{0,8}(?::|%3A)[ \t]{0,8})(?P<v>\S[^\r\n]{0,7999})",
        8100,
        anchor=r"(?i:proxy-authorization|authorization|set-cookie|cookie|x-api-key|api-key|x-auth-token)",
    ),
    Detector(
        "bearer_token",
        "Bb",
        r"(?i:(?<![A-Za-z0-9])(?:bearer|basic)(?:\s|%20|\+){1,4})(?P<v>[A-Za-z0-9._~+/=-]{8,6000})",
        6100,
        _token_like,
        anchor=r"(?i:bearer|basic)",
    ),
    Detector(
        "openai_key",
        "s",
        _L + r"sk-(?:(?:proj|svcacct|admin|None)-" + _TOK + r"{20,400}|[A-Za-z0-9]{32,400}(?![A-Za-z0-9_-]))",
        420,
    ),
    Detector(
        "secret",
        "A-Za-z0-9_.-",
        r"(?<![A-Za-z0-9_.-])[A-Za-z0-9_.-]{2,60}+[\"']?\s{0,3}(?:=|:|%3[Dd])\s{0,3}[\"']?"
        r"(?P<v>[^\s\"'&;,<>{}()\[\]]{4,512})",
        620,
        _assignment,
    ),
    Detector(
        "email",
        "A-Za-z0-9._%+-",
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}(?:@|%40|%2540)"
        r"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}(?![A-Za-z0-9-])",
        700,
    ),
    Detector(
        "iban",
        "A-Za-z",
        _L + r"[A-Za-z]{2}[0-9]{2}(?:(?: |%20)?[A-Za-z0-9]{4}){2,7}(?:(?: |%20)?[A-Za-z0-9]{1,4})?(?![A-Za-z0-9])",
        80,
        _iban,
    ),
    Detector(
        "ssn",
        "0-9",
        _nb("0-9A-Za-z-") + r"(?!000|666|9[0-9][0-9])[0-9]{3}[- ](?!00)[0-9]{2}[- ](?!0000)[0-9]{4}(?![0-9A-Za-z-])",
        15,
    ),
    Detector("ip_address", "0-9", _nb("0-9A-Za-z.") + _OCTET + r"(?:\." + _OCTET + r"){3}(?![0-9]|\.[0-9])", 20),
    Detector(
        "ip_address",
        "0-9A-Fa-f:",
        _nb("0-9A-Za-z:.") + r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:]{0,35}(?![0-9A-Za-z:])",
        45,
        _ipv6,
    ),
    Detector(
        "card",
        "0-9",
        _nb("0-9") + r"[0-9](?:(?:[ -]|%20)?[0-9]){12,18}(?![0-9])",
        80,
        _card,
        group="digit",
    ),
    Detector(
        "phone",
        "+%(0-9",
        r"(?:(?:\+|%2[Bb])[0-9]{1,3}" + _SEP + r"?(?:" + _OPEN + r"?[0-9]{1,4}" + _CLOSE + r"?" + _SEP + r"?){1,5}"
        r"[0-9]{2,4}|" + _nb("0-9.+-") + _OPEN + r"?[0-9]{3}" + _CLOSE + r"?" + _SEP + r"[0-9]{3}[.-][0-9]{4})"
        r"(?![0-9])",
        90,
        _digit_count(8, 15),
        group="digit",
    ),
)

KINDS: Final = tuple(dict.fromkeys(d.kind for d in DETECTORS))


def _guarded(det: Detector, name: str) -> str:
    # A value that is already a placeholder is not a value: redacting twice changes nothing.
    return f"(?=[{det.first}])" + det.pattern.replace("(?P<v>", f"(?P<{name}>(?!\\[REDACTED:)")


#: One guard per group: a necessary condition of every member, checked once per position instead of per member.
_GROUP_GUARD: Final = {
    "anywhere": r"(?=[-e:%hsgxprwA])",
    "word": r"(?:(?<![A-Za-z0-9])|(?<=%[0-9A-Fa-f]{2}))",
    "digit": r"(?=[0-9+(%])",
}


def _build() -> tuple[re.Pattern[str], dict[int, tuple[int, int]]]:
    groups: dict[int, tuple[int, int]] = {}
    by_group: dict[str, list[str]] = {}
    order: list[str] = []
    index = 0
    for i, det in enumerate(DETECTORS):
        if det.group not in order:
            order.append(det.group)
        if order[-1] != det.group:
            raise AssertionError(f"detectors of group {det.group} must be listed together")
        inner = _guarded(det, f"v{i}")
        by_group.setdefault(det.group, []).append(f"(?P<k{i}>{inner})")
        index += 1
        outer = index
        index += re.compile(inner).groups
        groups[outer] = (i, outer + 1 if "(?P<v" in det.pattern else 0)
    combined = "|".join(f"{_GROUP_GUARD[g]}(?:{'|'.join(by_group[g])})" for g in order)
    return re.compile(combined), groups


COMBINED, _GROUPS = _build()
#: Each detector alone, to try the next ones at a position where a candidate failed its validator.
_SINGLE: Final = tuple(re.compile(_guarded(d, "v")) for d in DETECTORS)
#: The longest text any short detector reads from where its match starts (plus look-behind context).
SHORT_WINDOW: Final = max(d.max_len for d in DETECTORS if not d.anchor) + 8
_LONG: Final = tuple((re.compile(d.anchor), d.max_len + 8) for d in DETECTORS if d.anchor)
#: Context kept before the resume point so that look-behinds see what they would see in the whole text.
_CONTEXT = 8


def placeholder(kind: str) -> str:
    return f"[REDACTED:{kind}]"


_PLACEHOLDERS: Final = {k: placeholder(k) for k in KINDS}


def _at(text: str, start: int, first: int) -> tuple[int, int, int, str] | None:
    """The first detector from index ``first`` on that matches at ``start`` and validates: (end, vs, ve, kind)."""
    for i in range(first, len(DETECTORS)):
        m = _SINGLE[i].match(text, start)
        if m is None:
            continue
        det = DETECTORS[i]
        end = m.end()
        if det.validate is not None:
            length = det.validate(m.group())
            if length is None:
                continue
            end = start + length
        vs, ve = m.span("v") if "v" in m.re.groupindex else (start, end)
        return end, vs, min(ve, end), det.kind
    return None


def _matches(text: str, pos: int, stop: int):
    """Yield (start, end, value_start, value_end, kind) of validated matches starting in [pos, stop), left to right.

    At each position the first detector (in ``DETECTORS`` order) that matches and validates wins; the next match is
    searched from the end of the previous one. This depends only on the text near each position, which is what makes
    ``StreamScanner`` cut-invariant.
    """
    search = COMBINED.search
    while pos < stop:
        m = search(text, pos)
        if m is None or m.start() >= stop:
            return
        index, vgroup = _GROUPS[m.lastindex]  # type: ignore[index]
        det = DETECTORS[index]
        start, end = m.span()
        if det.validate is not None:
            length = det.validate(m.group())
            if length is None:
                found = _at(text, start, index + 1)
                if found is None:
                    pos = start + 1
                    continue
                end, vs, ve, kind = found
                yield start, end, vs, ve, kind
                pos = end
                continue
            end = start + length
        if vgroup:
            vs, ve = m.span(vgroup)
            ve = min(ve, end)
        else:
            vs, ve = start, end
        yield start, end, vs, ve, det.kind
        pos = end


def redact(text: str) -> tuple[str, tuple[str, ...]]:
    """Replace every detected value; returns the text and the kinds found (in order, with repeats)."""
    out: list[str] = []
    kinds: list[str] = []
    last = 0
    for _s, _e, vs, ve, kind in _matches(text, 0, len(text)):
        out.append(text[last:vs])
        out.append(_PLACEHOLDERS[kind])
        kinds.append(kind)
        last = ve
    if not kinds:
        return text, ()
    out.append(text[last:])
    return "".join(out), tuple(kinds)


class StreamScanner:
    """Redacts a byte stream fed in segments; the concatenated output equals ``redact(whole)`` for any cut.

    A *cut* is any split of the byte stream into consecutive segments ``feed(seg1) … feed(segN)`` followed by
    ``close()``; segments may split a UTF-8 sequence, a secret or a line anywhere. Bytes are decoded as UTF-8 with
    replacement of invalid sequences (the incremental decoder gives the same characters as a one-shot decode).
    ``scan_every`` only sets how much text waits between scans (memory vs. work), never the result.
    """

    def __init__(self, scan_every: int = SHORT_WINDOW) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""  # _buf[:_ctx] is look-behind context already emitted; the rest is pending
        self._ctx = 0
        self._scan_every = scan_every
        self.kinds: list[str] = []

    def feed(self, data: bytes) -> str:
        self._buf += self._decoder.decode(data)
        if len(self._buf) - self._ctx < SHORT_WINDOW + self._scan_every:
            return ""
        return self._emit(final=False)

    def close(self) -> str:
        self._buf += self._decoder.decode(b"", final=True)
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        buf, pos = self._buf, self._ctx
        n = len(buf)
        if final:
            cut = n
        else:
            cut = n - SHORT_WINDOW
            for anchor, window in _LONG:
                hit = anchor.search(buf, max(pos, n - window))
                if hit is not None and hit.start() < cut:
                    cut = hit.start()
        out: list[str] = []
        last = pos
        for _s, e, vs, ve, kind in _matches(buf, pos, cut):
            out.append(buf[last:vs])
            out.append(_PLACEHOLDERS[kind])
            self.kinds.append(kind)
            last = ve
            if e > ve:  # the match continues past its value (a look-ahead-free tail): emit it as is
                out.append(buf[ve:e])
                last = e
        # Everything before max(cut, end of the last match) is decided.
        done = max(cut, last)
        out.append(buf[last:done])
        keep_from = max(0, done - _CONTEXT)
        self._buf = buf[keep_from:]
        self._ctx = done - keep_from
        return "".join(out)
