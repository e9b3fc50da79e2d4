"""MIKEY wire registries (RFC 3830 section 6, RFC 6043 section 6, RFC 4563, RFC 4650, RFC 6309).

Rules:
- One IntEnum per IANA "MIKEY Payload" name space, members named as in the RFC tables.
- Registries whose values change how the bytes are laid out (payload type, TS type, MAC alg, hash
  func, DH group, KV type, key data type, CS ID map type) are closed: the codec refuses unknown
  values, because it cannot know the length of what follows.  So are the data type (ERR 13,
  RFC 4738 6), the PRF func, the Encr alg (its ERR says which) and the PK-mode registries (Cert
  type, PKE C, S type) the node does not serve.
- Role and type registries that do not change the layout (ID Role, RAND Role, TS Role, ID Type,
  Error no) are open: the payload field is the enum member when the value is registered, else the
  raw ``int`` (field types ``IdRole | int`` ...), so a payload with an unassigned, future or
  private-range value (RFC 6043 14: 240-254) parses and can be ignored or refused at the semantic
  level ("Unexpected payloads ... SHOULD be ignored", RFC 6043 4.2.1.4 and the like).  An int
  rather than an IntEnum with a ``_missing_`` fallback: the type tells every reader that
  unregistered values exist, and decoding never invents enum members from received bytes.
- Registries that the codec does not interpret at all (Prot type, SP parameter type, General
  Extension type, Ticket Type) are plain ``int`` fields; their enums here only name the values.
- The key-derivation constants are the consecutive 9-digit chunks of the decimal expansion of e
  (RFC 3830 section 4.1.3); ``tests/mikey`` recomputes them.
"""

from __future__ import annotations

import enum

from firmware.mikey.prf import PrfFunc

__all__ = [
    "CertType",
    "CsIdMapType",
    "DataType",
    "DhGroup",
    "EncrAlg",
    "ErrNo",
    "GenExtType",
    "HashFunc",
    "IdRole",
    "IdType",
    "KeyDataType",
    "KvType",
    "MacAlg",
    "PayloadType",
    "PkeCache",
    "PrfFunc",
    "ProtType",
    "RandRole",
    "SignType",
    "SrtpParam",
    "TicketType",
    "TsRole",
    "TsType",
]

MIKEY_VERSION = 1


class DataType(enum.IntEnum):
    """HDR Data type (RFC 3830 Table 6.1.a, RFC 4650, RFC 4738, RFC 6043 Table 6.1)."""

    PSK_INIT = 0
    PSK_RESP = 1  # "PSK ver msg"
    PK_INIT = 2
    PK_RESP = 3  # "PK ver msg"
    DH_INIT = 4
    DH_RESP = 5
    ERROR = 6
    DHHMAC_INIT = 7
    DHHMAC_RESP = 8
    RSA_R_INIT = 9
    RSA_R_RESP = 10
    REQUEST_INIT_PSK = 11
    REQUEST_INIT_PK = 12
    REQUEST_RESP = 13
    TRANSFER_INIT = 14
    TRANSFER_RESP = 15
    RESOLVE_INIT_PSK = 16
    RESOLVE_INIT_PK = 17
    RESOLVE_RESP = 18


class PayloadType(enum.IntEnum):
    """Next payload values (RFC 3830 Table 6.1.b, RFC 6043 Table 6.2)."""

    LAST = 0
    KEMAC = 1
    PKE = 2
    DH = 3
    SIGN = 4
    T = 5
    ID = 6
    CERT = 7
    CHASH = 8
    V = 9
    SP = 10
    RAND = 11
    ERR = 12
    TR = 13
    IDR = 14
    RANDR = 15
    TP = 16
    TICKET = 17
    KEY_DATA = 20
    GENERAL_EXT = 21


class CsIdMapType(enum.IntEnum):
    """CS ID map type (RFC 3830 Table 6.1.e, RFC 4563 section 5, RFC 6043 Table 6.4)."""

    SRTP_ID = 0
    EMPTY = 1
    GENERIC_ID = 2


class EncrAlg(enum.IntEnum):
    """KEMAC Encr alg (RFC 3830 Table 6.2.a, RFC 6043 Table 6.5)."""

    NULL = 0
    AES_CM_128 = 1
    AES_KW_128 = 2
    AES_CM_256 = 3

    @property
    def key_len(self) -> int:
        return (0, 16, 16, 32)[self]

    @property
    def salt_len(self) -> int:
        """Length of the salt_key: 112 bits for AES-CM, 64 bits (the KW IV) for AES-KW."""
        return (0, 14, 8, 14)[self]


class MacAlg(enum.IntEnum):
    """KEMAC MAC alg and V Auth alg (RFC 3830 Table 6.2.b, RFC 6043 Table 6.6)."""

    NULL = 0
    HMAC_SHA_1_160 = 1
    HMAC_SHA_256_256 = 2

    @property
    def mac_len(self) -> int:
        return (0, 20, 32)[self]

    @property
    def key_len(self) -> int:
        """auth_key length: the hash output length (RFC 3830 4.1.4, RFC 6043 6.2)."""
        return (0, 20, 32)[self]

    @property
    def hash_name(self) -> str:
        return ("", "sha1", "sha256")[self]


class TsType(enum.IntEnum):
    """T / TR TS type (RFC 3830 Table 6.6.a, RFC 6043 Table 6.8)."""

    NTP_UTC = 0
    NTP = 1
    COUNTER = 2
    NTP_UTC_32 = 3

    @property
    def value_len(self) -> int:
        return (8, 8, 4, 4)[self]


class TsRole(enum.IntEnum):
    """TR TS Role (RFC 6043 Table 6.9); open: 240-254 are private use."""

    TRi = 1
    TRs = 2
    TRe = 3
    TRr = 4


class IdType(enum.IntEnum):
    """ID / IDR ID Type (RFC 3830 Table 6.7.a, RFC 6043 Table 6.10); open."""

    NAI = 0
    URI = 1
    BYTE_STRING = 2


class IdRole(enum.IntEnum):
    """IDR ID Role (RFC 6043 Table 6.11, RFC 6509 4.4); open: 240-254 are private use."""

    IDRi = 1
    IDRr = 2
    IDRkms = 3
    IDRpsk = 4
    IDRapp = 5
    IDRkmsi = 6  # Initiator's KMS (RFC 6509 4.4, MIKEY-SAKKE)
    IDRkmsr = 7  # Responder's KMS (RFC 6509 4.4, MIKEY-SAKKE)


class RandRole(enum.IntEnum):
    """RANDR RAND Role (RFC 6043 Table 6.13); open: 240-254 are private use."""

    RANDRi = 1
    RANDRr = 2
    RANDRkms = 3


class CertType(enum.IntEnum):
    """CERT Cert type (RFC 3830 Table 6.7.b)."""

    X509V3 = 0
    X509V3_URL = 1
    X509V3_SIGN = 2
    X509V3_ENCR = 3


class HashFunc(enum.IntEnum):
    """CHASH Hash func (RFC 3830 Table 6.8, RFC 6043 Table 6.12)."""

    SHA_1 = 0
    MD5 = 1
    SHA_256 = 2

    @property
    def hash_len(self) -> int:
        return (20, 16, 32)[self]


class PkeCache(enum.IntEnum):
    """PKE C field (RFC 3830 Table 6.4)."""

    NO_CACHE = 0
    CACHE = 1
    CACHE_FOR_CSB = 2


class DhGroup(enum.IntEnum):
    """DH-Group (RFC 3830 Table 6.4): OAKLEY 5 / 1 / 2."""

    OAKLEY_5 = 0
    OAKLEY_1 = 1
    OAKLEY_2 = 2

    @property
    def value_len(self) -> int:
        """DH-value length in bytes: 1536, 768 and 1024 bits."""
        return (192, 96, 128)[self]


class SignType(enum.IntEnum):
    """SIGN S type (RFC 3830 Table 6.5; 2 = ECCSI, RFC 6509)."""

    RSA_PKCS1_V1_5 = 0
    RSA_PSS = 1
    ECCSI = 2


class KeyDataType(enum.IntEnum):
    """Key data sub-payload Type (RFC 3830 Table 6.13.a, RFC 6043 Table 6.7)."""

    TGK = 0
    TGK_SALT = 1
    TEK = 2
    TEK_SALT = 3
    GTGK = 4
    GTGK_SALT = 5
    MPK = 6

    @property
    def has_salt(self) -> bool:
        return self in (KeyDataType.TGK_SALT, KeyDataType.TEK_SALT, KeyDataType.GTGK_SALT)


class KvType(enum.IntEnum):
    """Key data KV (key validity) type (RFC 3830 Table 6.13.b)."""

    NULL = 0
    SPI = 1
    INTERVAL = 2


class ProtType(enum.IntEnum):
    """SP / GENERIC-ID Prot type (RFC 3830 Table 6.10); kept as plain int on payloads."""

    SRTP = 0


class SrtpParam(enum.IntEnum):
    """SRTP policy parameter types (RFC 3830 Table 6.10.1.a)."""

    ENCR_ALG = 0
    SESSION_ENCR_KEY_LEN = 1
    AUTH_ALG = 2
    SESSION_AUTH_KEY_LEN = 3
    SESSION_SALT_LEN = 4
    SRTP_PRF = 5
    KEY_DERIVATION_RATE = 6
    SRTP_ENCRYPTION = 7
    SRTCP_ENCRYPTION = 8
    FEC_ORDER = 9
    SRTP_AUTHENTICATION = 10
    AUTH_TAG_LEN = 11
    SRTP_PREFIX_LEN = 12


class GenExtType(enum.IntEnum):
    """General Extension type (RFC 3830 6.15, RFC 4563, RFC 4738, RFC 5410); int on payloads."""

    VENDOR_ID = 0
    SDP_IDS = 1
    KEY_ID = 3
    CSB_ID = 4  # RFC 4738 6
    OMA_BCAST = 5


class TicketType(enum.IntEnum):
    """TP / TICKET Ticket Type (RFC 6043 Table 6.15); kept as int on payloads."""

    MIKEY_BASE_TICKET = 1
    GPP_BASE_TICKET = 2  # "3GPP base ticket", specified by 3GPP


class ErrNo(enum.IntEnum):
    """ERR Error no (RFC 3830 Table 6.12, RFC 4738 6, RFC 6043 Table 6.14); open on the wire."""

    AUTH_FAILURE = 0
    INVALID_TS = 1
    INVALID_PRF = 2
    INVALID_MAC = 3
    INVALID_EA = 4
    INVALID_HA = 5
    INVALID_DH = 6
    INVALID_ID = 7
    INVALID_CERT = 8
    INVALID_SP = 9
    INVALID_SPPAR = 10
    INVALID_DT = 11
    UNSPECIFIED = 12
    UNSUPPORTED_MESSAGE_TYPE = 13  # RFC 4738 6: "Unsupported message type ------- 13"
    INVALID_TICKET = 14
    INVALID_TPPAR = 15


# Key-derivation constants (RFC 3830 4.1.3 / 4.1.4, RFC 6043 5.1.1 and A.2.2).
CONST_TEK = 0x2AD01C64
CONST_TGK_AUTH = 0x1B5C7973
CONST_TGK_ENCR = 0x15798CEF
CONST_TGK_SALT = 0x39A2C14B
CONST_ENCR = 0x150533E1
CONST_AUTH = 0x2D22AC75
CONST_SALT = 0x29B88916
CONST_MPKI = 0x220E99A2
CONST_MPKR = 0x1F4D675B
CONST_MPKR_FORKED = 0x2B288856
CONST_TGK_FORKED = 0x1512B54A
