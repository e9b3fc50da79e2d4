"""Canonical form of public user identities (SIP and TEL URIs), for TS 33.328 6.2.3.5 checks.

Rules (RFC 3261 section 19.1.4, RFC 3966 section 3 and 5):
- SIP/SIPS URIs: the scheme and the host part compare case-insensitively; the user part compares
  case-sensitively; percent-encoded octets are decoded unless reserved; URI parameters and
  headers are not part of a public identity and are dropped; a port is kept as given (RFC 3261:
  an omitted default port does not match an explicit one).
- TEL URIs: visual separators (-, ., (, )) are removed from the number; the number, including the
  leading '+', compares as text; parameters other than phone-context are dropped; phone-context
  compares case-insensitively.
- Anything else is refused (IdentityError): an identity we cannot canonicalise is never matched.
- Results are memoised (bounded LRU): the same identities recur on every request.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote

_VISUAL = re.compile(r"[-.()]")
_SIP = re.compile(r"^(sips?):(?:([^@]*)@)?([^;?]+)(.*)$", re.I)
# RFC 3261 unreserved + user-unreserved characters need no escaping in the user part.
_USER_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,;?/")


class IdentityError(ValueError):
    """The text is not a SIP or TEL URI we can compare."""


def _decode_user(user: str) -> str:
    def repl(m: re.Match[str]) -> str:
        char = unquote(m.group(0))
        return char if char in _USER_SAFE else m.group(0).upper()

    return re.sub(r"%[0-9A-Fa-f]{2}", repl, user)


@functools.lru_cache(maxsize=65536)
def canonical(identity: str) -> str:
    """The canonical form of a SIP, SIPS or TEL URI; raises IdentityError for anything else."""
    text = identity.strip()
    if not text or len(text) > 2048 or any(ord(c) < 0x21 for c in text):
        raise IdentityError("identity is empty, too long or contains control characters")
    scheme, _, rest = text.partition(":")
    scheme = scheme.lower()
    if scheme == "tel":
        number, _, params = rest.partition(";")
        number = _VISUAL.sub("", number)
        if not re.fullmatch(r"\+?[0-9A-Fa-f*#]+", number):
            raise IdentityError("TEL URI number is not valid")
        context = ""
        for param in params.split(";") if params else []:
            name, _, value = param.partition("=")
            if name.lower() == "phone-context":
                context = ";phone-context=" + value.lower()
        if not number.startswith("+") and not context:
            raise IdentityError("local TEL URI without phone-context")
        return f"tel:{number.upper()}{context}"
    match = _SIP.match(text)
    if not match:
        raise IdentityError("not a SIP, SIPS or TEL URI")
    scheme, user, hostport = match.group(1).lower(), match.group(2), match.group(3)
    host, _, port = hostport.rpartition(":") if hostport.count(":") == 1 else (hostport, "", "")
    if not host:
        host, port = port, ""
    host = host.lower()
    if not host or not re.fullmatch(r"[a-z0-9.\-\[\]:]+", host):
        raise IdentityError("SIP URI host is not valid")
    if port and not port.isdigit():
        raise IdentityError("SIP URI port is not valid")
    user_part = _decode_user(user) + "@" if user is not None else ""
    return f"{scheme}:{user_part}{host}" + (f":{port}" if port else "")


def same_identity(a: str, b: str) -> bool:
    """True when both canonicalise to the same identity; False when either cannot."""
    try:
        return canonical(a) == canonical(b)
    except IdentityError:
        return False
