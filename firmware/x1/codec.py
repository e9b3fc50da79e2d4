"""ETSI TS 103 221-1 X1 XML: the request container in, response messages out.

Element names, namespaces and order follow TS 103 221-1 V1.11.1 and its XSD (TS_103_221_01.xsd
1.19.1, TS_103_280.xsd 2.12.1), as summarised in shared/spec/li-interfaces.md section 1; the
shapes were compared with the public sipgate li-lib-x1x2x3 test resources (see
tests/x1/data/README.md). We do not validate against the XSD (not vendored); the checks below
are the ones the XSD would make for the parts we read, made by hand.

lxml (libxml2; cp313 wheels) rather than defusedxml over the standard library's expat: parsing
the 1.5 kB ActivateTask sample took 138 us with lxml and 1097 us with defusedxml here, and lxml
builds namespaced responses without process-wide prefix registration.

Rules:
- Parsing is lxml with entity resolution, DTD loading and the network off and a resolver
  that refuses every external load (nothing outside the body is ever opened), comments and
  processing instructions dropped; any DOCTYPE (so any entity declaration: XXE, billion
  laughs) is refused, as is nesting deeper than `max_depth` and more than `max_messages`
  messages in one container. The body size is capped before (firmware/api/https.py).
- What cannot be read as an X1Request container of known messages is `Unparseable` (answered
  with X1TopLevelErrorResponse); a message whose own fields are wrong raises `MessageError`
  with its X1 error code (answered with ErrorResponse for that message alone).
- Every x1RequestMessage starts with the five header fields in order (admfIdentifier,
  neIdentifier, messageTimestamp, version, x1TransactionId); the message is chosen by its
  xsi:type, a QName resolved against the element's namespace declarations.
- Timestamps we write are QualifiedMicrosecondDateTime: UTC with exactly six fraction digits.
- Text we write comes from our own store or the request's checked fields; lxml escapes it.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from lxml import etree

NS = "http://uri.etsi.org/03221/X1/2017/10"
NS_COMMON = "http://uri.etsi.org/03280/common/2017/07"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
_XSI_TYPE = f"{{{XSI}}}type"
_NSMAP = {"x1": NS, "xsi": XSI}

# message types we serve (the request type minus "Request"; TS 103 221-1 RequestMessageType)
MESSAGES = (
    "ActivateTask",
    "ModifyTask",
    "DeactivateTask",
    "DeactivateAllTasks",
    "GetTaskDetails",
    "ListAllDetails",
    "CreateDestination",
    "ModifyDestination",
    "RemoveDestination",
    "GetDestinationDetails",
    "Ping",
    "Keepalive",
)

SYNTAX = 1010
UNSUPPORTED_VERSION = 1020
UNSUPPORTED_REQUEST = 1080
UNSUPPORTED_TARGET = 3010
UNSUPPORTED_COMBINATION = 3020
UNSUPPORTED_ADDRESS = 6020

_UUID = re.compile(r"[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}")
_VERSION = re.compile(r"v1\.\d+\.\d+")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")
_URI_CHARS = r"[a-zA-Z0-9!#$&-;=?-\[\]_~%]+"  # TS 103 280 SIPURI / TELURI character class
_SIP = re.compile(rf"sips?:{_URI_CHARS}")
_TEL = re.compile(rf"tel:{_URI_CHARS}")
_E164 = re.compile(r"[0-9]{1,15}")


class Unparseable(Exception):
    """The body is not an X1Request container we can read (X1TopLevelErrorResponse)."""


class MessageError(Exception):
    """One request message is wrong; `code` is its X1 error code (ErrorResponse)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Header:
    admf: str
    ne: str
    timestamp: str
    version: str
    transaction_id: str


@dataclass(frozen=True)
class RequestMessage:
    """One x1RequestMessage: its type (ActivateTask, Ping, ...), header, and the element."""

    kind: str
    header: Header
    element: etree._Element = field(repr=False)


# --- parsing --------------------------------------------------------------------------------


class _NoExternalLoads(etree.Resolver):
    """Refuses every external load. libxml2 (2.14, under lxml 6) reads an external DTD subset
    (`<!DOCTYPE x SYSTEM "file:...">`) and external parameter entities from local files even
    with load_dtd and resolve_entities off; they come here first, and nothing is read."""

    def resolve(self, system_url: str | None, public_id: str | None, context: object, /) -> None:
        raise Unparseable("an external DTD or entity is not allowed")


_PARSER = etree.XMLParser(
    resolve_entities=False,
    load_dtd=False,
    dtd_validation=False,
    no_network=True,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
    collect_ids=False,
)
_PARSER.resolvers.add(_NoExternalLoads())


def _depth(root: etree._Element) -> int:
    deepest, stack = 0, [(root, 1)]
    while stack:
        element, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in element)
    return deepest


def parse_xml(body: bytes, max_depth: int) -> etree._Element:
    """The root element of `body`, parsed safely (see the module rules)."""
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise Unparseable(f"not well-formed XML ({exc.msg})") from None
    tree = root.getroottree()
    # No DOCTYPE at all: without one no entity can be declared, so none can be referenced (an
    # undeclared reference is not well-formed and fails above).
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise Unparseable("a DOCTYPE is not allowed (no DTDs, no entities)")
    if _depth(root) > max_depth:
        raise Unparseable(f"the XML nests deeper than {max_depth} elements")
    return root


def _local(element: etree._Element) -> str:
    tag = element.tag
    if not isinstance(tag, str) or not tag.startswith(f"{{{NS}}}"):
        return ""
    return tag[len(NS) + 2 :]


def _children(element: etree._Element) -> list[etree._Element]:
    """The child elements (comments and processing instructions are dropped at parse)."""
    return [c for c in element if isinstance(c.tag, str)]


def _text(element: etree._Element) -> str:
    if _children(element):
        raise MessageError(SYNTAX, f"{_local(element) or 'a foreign element'} must hold text only")
    return " ".join((element.text or "").split())  # xs:token: whitespace collapsed


def _xsi_type(element: etree._Element) -> str:
    value = element.get(_XSI_TYPE)
    if value is None:
        raise Unparseable("an x1RequestMessage has no xsi:type")
    prefix, _, name = value.strip().rpartition(":")
    if element.nsmap.get(prefix or None) != NS:
        raise Unparseable("the xsi:type of an x1RequestMessage is not an X1 type")
    return name


def parse_request(body: bytes, max_depth: int, max_messages: int) -> list[RequestMessage]:
    """The messages of an X1Request container, in document order."""
    root = parse_xml(body, max_depth)
    if root.tag != f"{{{NS}}}X1Request":
        raise Unparseable("the root element is not X1Request in the X1 namespace")
    elements = _children(root)
    if not elements:
        raise Unparseable("the container holds no x1RequestMessage")
    if len(elements) > max_messages:
        raise Unparseable(f"more than {max_messages} messages in one container")
    found = []
    for element in elements:
        if _local(element) != "x1RequestMessage":
            raise Unparseable("the container holds something other than x1RequestMessage")
        kind = _xsi_type(element)
        if not kind.endswith("Request"):
            raise Unparseable("an x1RequestMessage is not of a request type")
        found.append(RequestMessage(kind[: -len("Request")], _header(element), element))
    return found


_HEADER = ("admfIdentifier", "neIdentifier", "messageTimestamp", "version", "x1TransactionId")


def _header(element: etree._Element) -> Header:
    children = _children(element)[: len(_HEADER)]
    names = [_local(c) for c in children]
    if names != list(_HEADER):
        raise Unparseable("an x1RequestMessage does not start with the five header fields")
    try:
        values = [_text(c) for c in children]
    except MessageError as exc:
        raise Unparseable(str(exc)) from None
    return Header(*values)


def check_header(header: Header) -> None:
    """The lexical rules of the header fields (TS 103 280 / X1 XSD patterns)."""
    if not _VERSION.fullmatch(header.version):
        raise MessageError(UNSUPPORTED_VERSION, "version must be v1.x.y")
    if not _UUID.fullmatch(header.transaction_id):
        raise MessageError(SYNTAX, "x1TransactionId is not a lower-case UUID")
    if not _TIMESTAMP.fullmatch(header.timestamp):
        raise MessageError(SYNTAX, "messageTimestamp is not a QualifiedMicrosecondDateTime")
    if not header.admf or not header.ne:
        raise MessageError(SYNTAX, "admfIdentifier and neIdentifier are required")


# --- message bodies -------------------------------------------------------------------------


class Body:
    """Child elements read by name, each one of `allowed` (a message's body after the header,
    or a nested sequence such as taskDetails)."""

    def __init__(self, elements: list[etree._Element], allowed: Iterable[str]) -> None:
        self.items = [(_local(c), c) for c in elements]
        names = set(allowed)
        for name, child in self.items:
            if name not in names:
                raise MessageError(SYNTAX, f"unexpected element {name or repr(child.tag)}")

    def all(self, name: str) -> list[etree._Element]:
        return [c for n, c in self.items if n == name]

    def optional(self, name: str) -> etree._Element | None:
        found = self.all(name)
        if len(found) > 1:
            raise MessageError(SYNTAX, f"at most one {name} is allowed")
        return found[0] if found else None

    def one(self, name: str) -> etree._Element:
        found = self.optional(name)
        if found is None:
            raise MessageError(SYNTAX, f"{name} is required")
        return found

    def text(self, name: str) -> str:
        return _text(self.one(name))


def body(message: RequestMessage, *allowed: str) -> Body:
    """The message-specific children of `message` (after the header)."""
    return Body(_children(message.element)[len(_HEADER) :], allowed)


def children(element: etree._Element, *allowed: str) -> Body:
    return Body(_children(element), allowed)


def text_of(element: etree._Element) -> str:
    return _text(element)


def uuid(text: str, what: str) -> str:
    if not _UUID.fullmatch(text):
        raise MessageError(SYNTAX, f"{what} is not a lower-case UUID")
    return text


def time_of(text: str, what: str) -> float:
    if not _TIMESTAMP.fullmatch(text):
        raise MessageError(SYNTAX, f"{what} is not a QualifiedMicrosecondDateTime")
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def target_identity(target_identifiers: etree._Element) -> str:
    """The one SIP URI, TEL URI or E.164 number of targetIdentifiers, as a SIP/TEL URI."""
    entries = children(target_identifiers, "targetIdentifier").all("targetIdentifier")
    if not entries:
        raise MessageError(SYNTAX, "targetIdentifiers holds no targetIdentifier")
    if len(entries) > 1:  # several criteria must all match: a KMS target is one identity
        raise MessageError(UNSUPPORTED_COMBINATION, "a task names exactly one target identity")
    arms = _children(entries[0])
    if len(arms) != 1:
        raise MessageError(SYNTAX, "a targetIdentifier is a choice of exactly one identifier")
    kind, value = _local(arms[0]), _text(arms[0])
    if kind == "sipUri" and _SIP.fullmatch(value):
        return value
    if kind == "telUri" and _TEL.fullmatch(value):
        return value
    if kind == "e164Number" and _E164.fullmatch(value):
        return f"tel:+{value}"
    if kind in ("sipUri", "telUri", "e164Number"):
        raise MessageError(SYNTAX, f"{kind} does not match its pattern")
    raise MessageError(UNSUPPORTED_TARGET, "only sipUri, telUri and e164Number are supported")


# --- responses ------------------------------------------------------------------------------


def now_timestamp(unix: float) -> str:
    """QualifiedMicrosecondDateTime of `unix` (UTC, six fraction digits)."""
    when = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _el(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, f"{{{NS}}}{name}")
    if text is not None:
        child.text = text
    return child


@dataclass(frozen=True)
class ResponseHeader:
    admf: str
    ne: str
    timestamp: str
    version: str
    transaction_id: str | None


class Response:
    """An X1Response container being built."""

    def __init__(self) -> None:
        self.root = etree.Element(f"{{{NS}}}X1Response", nsmap=_NSMAP)

    def message(self, kind: str, header: ResponseHeader) -> etree._Element:
        element = _el(self.root, "x1ResponseMessage")
        element.set(_XSI_TYPE, f"x1:{kind}")
        _el(element, "admfIdentifier", header.admf)
        _el(element, "neIdentifier", header.ne)
        _el(element, "messageTimestamp", header.timestamp)
        _el(element, "version", header.version)
        if header.transaction_id is not None:
            _el(element, "x1TransactionId", header.transaction_id)
        return element

    def ok(self, kind: str, header: ResponseHeader) -> None:
        _el(self.message(f"{kind}Response", header), "oK", "AcknowledgedAndCompleted")

    def error(self, kind: str, header: ResponseHeader, code: int, description: str) -> None:
        element = self.message("ErrorResponse", header)
        _el(element, "requestMessageType", kind if kind in MESSAGES else "ActivateTask")
        info = _el(element, "errorInformation")
        _el(info, "errorCode", str(code))
        _el(info, "errorDescription", description)

    def bytes(self) -> bytes:
        return etree.tostring(self.root, xml_declaration=True, encoding="UTF-8")


def top_level_error(admf: str, ne: str, timestamp: str, version: str) -> bytes:
    root = etree.Element(f"{{{NS}}}X1TopLevelErrorResponse", nsmap=_NSMAP)
    _el(root, "admfIdentifier", admf)
    _el(root, "neIdentifier", ne)
    _el(root, "messageTimestamp", timestamp)
    _el(root, "version", version)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    """A child element in the X1 namespace (message-specific response content)."""
    return _el(parent, name, text)


def sub_common(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    """A child element in the TS 103 280 namespace (its types' children are qualified there)."""
    child = etree.SubElement(parent, f"{{{NS_COMMON}}}{name}")
    if text is not None:
        child.text = text
    return child
