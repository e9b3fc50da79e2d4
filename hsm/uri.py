"""PKCS#11 URIs (RFC 7512) naming the token the vault uses.

Rules:
- The token is chosen by its label (`token=`), optionally narrowed by `manufacturer=`, `serial=` and
  `model=`; slot numbers are refused (`slot-id=`), because they change when tokens are initialised.
- `pin-value=` is refused: PINs never appear in configuration text. `pin-source=` names a file
  (`file:` URI or absolute path) or a systemd credential (`credential:<name>`).
- Values are percent-decoded; an attribute given twice is an error; unknown attributes are errors
  unless vendor-specific (`x-` prefix).
- Errors are HsmConfigurationError naming the attribute, never a value of `pin-value`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from firmware.core.errors import HsmConfigurationError

_PATH_ATTRS = frozenset(
    {
        "token",
        "manufacturer",
        "serial",
        "model",
        "object",
        "type",
        "id",
        "library-manufacturer",
        "library-description",
        "library-version",
        "slot-manufacturer",
        "slot-description",
    }
)
_QUERY_ATTRS = frozenset({"pin-source", "module-name", "module-path"})


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of a PKCS#11 URI the vault uses."""

    token: str
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    object: str | None = None
    type: str | None = None
    module_path: str | None = None
    module_name: str | None = None
    pin_source: str | None = None


def _decode(name: str, raw: str) -> str:
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise HsmConfigurationError(f"PKCS#11 URI attribute {name!r} is not UTF-8") from None


def _pairs(part: str, sep: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if not part:
        return out
    for item in part.split(sep):
        if not item:
            continue
        name, eq, raw = item.partition("=")
        name = name.strip().lower()
        if name == "pin-value":
            # Never echo the value.
            raise HsmConfigurationError(
                "PKCS#11 URI attribute 'pin-value' is refused: PINs never appear in "
                "configuration text; use pin-source (a file or a systemd credential)"
            )
        if name == "slot-id":
            raise HsmConfigurationError(
                "PKCS#11 URI attribute 'slot-id' is refused: select the token by its label (token=)"
            )
        if not eq:
            raise HsmConfigurationError(f"PKCS#11 URI {where} attribute {name!r} has no value")
        allowed = _PATH_ATTRS if where == "path" else _QUERY_ATTRS
        if name not in allowed and not name.startswith("x-"):
            raise HsmConfigurationError(f"PKCS#11 URI has an unknown {where} attribute {name!r}")
        if name in out:
            raise HsmConfigurationError(f"PKCS#11 URI attribute {name!r} is given twice")
        out[name] = _decode(name, raw)
    return out


def parse_uri(text: str) -> Pkcs11Uri:
    """Parse a `pkcs11:` URI; raises HsmConfigurationError."""
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() != "pkcs11":
        raise HsmConfigurationError("the HSM token must be named by a 'pkcs11:' URI (RFC 7512)")
    path, _, query = rest.partition("?")
    attrs = _pairs(path, ";", "path")
    qattrs = _pairs(query, "&", "query")
    token = attrs.get("token")
    if not token:
        raise HsmConfigurationError("PKCS#11 URI must name the token by its label (token=...)")
    return Pkcs11Uri(
        token=token,
        manufacturer=attrs.get("manufacturer"),
        serial=attrs.get("serial"),
        model=attrs.get("model"),
        object=attrs.get("object"),
        type=attrs.get("type"),
        module_path=qattrs.get("module-path"),
        module_name=qattrs.get("module-name"),
        pin_source=qattrs.get("pin-source"),
    )
