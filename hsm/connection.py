"""Token connection and key loading: the PKCS#11 library, the one logged-in session, the keys.

Rules and invariants:
- Every method runs with hsm.lock.PKCS11_LOCK held by its caller; none takes it.
- The token is the one the URI selects (label, optional manufacturer/serial/model); none or two
  matching refuse the start, as does a required mechanism the token does not offer.
- One read-write session carries the login (python-pkcs11 logs out when it is closed); session
  objects (hot-key copies, transient PSKs) belong to it. Re-initialising the library
  (C_Finalize/C_Initialize) closes every session of the process: one vault per process.
- The PIN is read from its PinSource for the login and then dropped; it never appears in a log,
  an error or a repr.
- Long-term keys are found by label `<name>/v<version>` among the token's secret keys. Each one is
  checked by hsm/keycheck.py at every load (start, refresh, recovery) and after it is generated
  (an imported one also against its security officer's vouch, hsm/provenance.py);
  one key that breaks its template, or two objects with one label, refuse the whole load
  (HsmConfigurationError naming the label and the attribute), so no key of a spoiled token is used.
- Hot keys are used through session copies (C_CopyObject, still sensitive and non-extractable),
  made at load and on create, dropped with their session.
- The highest version of a name is ACTIVE, lower ones DECRYPT_ONLY; the loaded keys are the truth
  between loads (create and destroy through this connection keep them current). A version asked
  for that is not loaded may have been imported by another process since: the token is scanned
  for new versions (at most once per RESCAN_INTERVAL), each checked as at a load.
- Keys are loaded exactly while there is a session (connect sets both, drop clears both), so a
  handle from use() comes with a live `session`. Without one (not started, lost, closed), key
  access and require_session() raise Disconnected, which the vault answers with HsmUnavailable
  and the monitor's reason. `session` is a plain attribute (None when disconnected): the hot paths
  read it without a property call.
- User PSKs the vault computes with are session objects held in `psks` (hsm/psks.py): forgotten
  with the session, destroyed with the KEK version that wrapped them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pkcs11
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from firmware.core.errors import HsmConfigurationError, KeyVersionNotFound, KmsError
from firmware.core.ports import KeyName
from hsm.direct import DirectCalls
from hsm.errors import (
    ActiveVersionRefused,
    LoginRefused,
    condition,
    login_refused_types,
    to_kms_error,
)
from hsm.keycheck import Vouched, check_key
from hsm.pin import PinSource
from hsm.provenance import is_vouched
from hsm.psks import DEFAULT_LIMIT, PskObjects
from hsm.templates import SESSION_COPY, SPECS, key_label, parse_label
from hsm.uri import Pkcs11Uri

log = logging.getLogger(__name__)

LOGIN_REFUSED = login_refused_types()


class Disconnected(Exception):
    """No session and no keys (not started, lost or closed); the vault says why."""


@dataclass
class LoadedKey:
    token_obj: Any = field(repr=False)
    use: Any = field(repr=False)  # the session copy, or token_obj when copies are off


RESCAN_INTERVAL = 5.0  # seconds between looks for key versions that appeared in the token


def mechanism_name(m: object) -> str:
    return f"CKM_{m.name}" if isinstance(m, Mechanism) else f"0x{int(m):08x}"  # type: ignore[call-overload]


class Connection:
    """The library, the session and the loaded keys of one token; see the module docstring."""

    def __init__(
        self,
        uri: Pkcs11Uri,
        module: str,
        pin_source: PinSource,
        *,
        required_mechanisms: frozenset[Mechanism],
        session_copies: bool,
        direct_calls: bool,
        psk_objects: int = DEFAULT_LIMIT,
    ) -> None:
        self.uri = uri
        self.module = module
        self._pin_source = pin_source
        self._required = required_mechanisms
        self._copies = session_copies
        self._direct_calls = direct_calls
        self.lib: Any = None
        self.direct: DirectCalls | None = None
        self.session: Any = None  # the logged-in session, or None (module docstring)
        self.mechanisms: frozenset[Any] = frozenset()
        self._keys: dict[KeyName, dict[int, LoadedKey]] = {}
        self._active: dict[KeyName, int] = {}
        self.psks = PskObjects(psk_objects)
        self._rescanned = -RESCAN_INTERVAL  # monotonic time of the last look for new versions

    # --- library and session ------------------------------------------------------------------

    def load_library(self) -> None:
        try:
            self.lib = pkcs11.lib(self.module)
            self.direct = DirectCalls(self.module) if self._direct_calls else None
        except p11e.PKCS11Error as exc:
            raise HsmConfigurationError(
                f"cannot load the PKCS#11 module {self.module!r}: {condition(exc)}"
            ) from None

    def reinitialize(self) -> None:
        """C_Finalize + C_Initialize (closes every session of the process)."""
        self.lib.reinitialize()

    @property
    def loaded(self) -> bool:
        return self.lib is not None

    @property
    def connected(self) -> bool:
        return self.session is not None

    def require_session(self) -> Any:
        session = self.session
        if session is None:
            raise Disconnected
        return session

    def connect(self) -> None:
        """Find the token, check mechanisms, log in, load keys; raises KmsError subclasses."""
        try:
            token = self._find_token()
            mechanisms = frozenset(token.slot.get_mechanisms())
        except p11e.PKCS11Error as exc:
            raise to_kms_error(exc, f"looking up token {self.uri.token!r}") from None
        missing = sorted(mechanism_name(m) for m in self._required - mechanisms)
        if missing:
            raise HsmConfigurationError(
                f"token {self.uri.token!r} does not offer required mechanism(s): "
                + ", ".join(missing)
            )
        session = self._login(token)
        try:
            self._load_keys(session)
        except p11e.PKCS11Error as exc:
            with contextlib.suppress(p11e.PKCS11Error):
                session.close()
            raise to_kms_error(exc, "loading keys") from None
        except KmsError:
            with contextlib.suppress(p11e.PKCS11Error):
                session.close()
            raise
        self.session = session
        self.mechanisms = mechanisms

    def drop(self) -> None:
        """Forget the session and every handle (after loss: the session is stale; no call)."""
        self.session = None
        self._keys = {}
        self._active = {}
        self.psks.clear()

    def close(self) -> None:
        """Close the session (logging out when it carried the login) and drop every handle."""
        session = self.session
        self.drop()
        if session is not None:
            with contextlib.suppress(p11e.PKCS11Error):
                session.close()

    def check_token(self) -> None:
        """C_GetTokenInfo plus one token-object read; raises PKCS11Error when the token is gone
        (with session copies SoftHSM answers crypto from memory after its files vanish)."""
        self.require_session().token.slot.get_token()
        for versions in self._keys.values():
            for key in versions.values():
                key.token_obj[Attribute.LABEL]
                return

    def token_alive(self) -> bool:
        try:
            self.check_token()
        except (p11e.PKCS11Error, Disconnected):
            return False
        return True

    def _find_token(self) -> Any:
        uri = self.uri
        tokens = [
            t
            for t in self.lib.get_tokens(token_label=uri.token)
            if (uri.manufacturer is None or t.manufacturer_id == uri.manufacturer)
            and (uri.serial is None or t.serial.decode(errors="replace").strip() == uri.serial)
            and (uri.model is None or t.model == uri.model)
        ]
        if not tokens:
            raise HsmConfigurationError(f"no PKCS#11 token matches token={uri.token!r}")
        if len(tokens) > 1:
            raise HsmConfigurationError(
                f"{len(tokens)} tokens match token={uri.token!r}; narrow the URI (serial=)"
            )
        return tokens[0]

    def _login(self, token: Any) -> Any:
        pin = self._pin_source.read()
        try:
            try:
                return token.open(rw=True, user_pin=pin)
            except p11e.UserAlreadyLoggedIn:
                return token.open(rw=True)
        except LOGIN_REFUSED as exc:
            raise LoginRefused(
                f"token {self.uri.token!r} refused the login ({condition(exc)}); "
                f"check the PIN in {self._pin_source.describe()}"
            ) from None
        except p11e.PKCS11Error as exc:
            raise to_kms_error(exc, f"logging in to token {self.uri.token!r}") from None
        finally:
            del pin

    # --- keys ---------------------------------------------------------------------------------

    def versions_of(self, name: KeyName) -> dict[int, LoadedKey]:
        found = self._keys.get(name)
        if found is None:
            raise Disconnected
        return found

    def active_of(self, name: KeyName) -> int:
        self.versions_of(name)
        active = self._active.get(name)
        if active is None:
            raise KeyVersionNotFound(f"the token has no version of {name.value}")
        return active

    def use(self, name: KeyName, version: int) -> Any:
        """The handle to compute with for `name` version `version`."""
        found = self._keys.get(name)
        if found is None:
            raise Disconnected
        key = found.get(version)
        if key is None:
            key = self._arrived(name, version)
        return key.use

    def _arrived(self, name: KeyName, version: int) -> LoadedKey:
        """`version` of `name` when it was put into the token since the last load (another
        process imported it: key transport in a cluster); at most one look per RESCAN_INTERVAL,
        so requests naming versions nobody has cost one token scan per interval, not each."""
        now = time.monotonic()
        if now - self._rescanned >= RESCAN_INTERVAL:
            self._rescanned = now
            self._load_new_keys(self.require_session())
            key = self._keys[name].get(version)
            if key is not None:
                log.info("loaded key %s/v%d, which appeared in the token", name.value, version)
                return key
        raise KeyVersionNotFound(f"{name.value} version {version} is not in the token")

    def reload_keys(self) -> None:
        self._load_keys(self.require_session())

    def next_version(self, name: KeyName) -> int:
        on_token = set(self._scan(self.require_session()).get(name, {}))
        return max(on_token | set(self.versions_of(name)), default=0) + 1

    def create(self, name: KeyName) -> int:
        """Generate the next version of `name` from its template, check it, load it."""
        spec = SPECS[name]
        version = self.next_version(name)
        label = key_label(name, version)
        obj = self.require_session().generate_key(
            spec.key_type,
            spec.bits,
            label=label,
            id=label.encode(),
            store=True,
            mechanism=spec.gen_mechanism,
            template=spec.template(version),
        )
        try:
            check_key(obj, spec, version)
        except HsmConfigurationError:
            obj.destroy()  # the token did not make the key as asked: leave nothing behind
            raise
        self.add(name, version, obj)
        log.info("created key %s in the HSM", label)
        return version

    def destroy(self, name: KeyName, version: int) -> None:
        """Destroy a version that is not the active one (its session copy and, for a KEK, the
        PSK objects it unwrapped first)."""
        found = self.versions_of(name)
        label = key_label(name, version)
        if version not in found:
            raise KeyVersionNotFound(f"{label} is not in the token")
        if version == self._active.get(name):
            raise ActiveVersionRefused(f"{label} is the active version; create a newer one first")
        key = found[version]
        if name is KeyName.KEY_ENCRYPTION:
            for psk in self.psks.pop_version(version):
                psk.destroy()
        if key.use is not key.token_obj:
            key.use.destroy()
            key.use = key.token_obj
        key.token_obj.destroy()
        del found[version]
        log.info("destroyed key %s in the HSM", label)

    def add(self, name: KeyName, version: int, obj: Any) -> None:
        """Load token object `obj` as `name` version `version` (it was checked by the caller)."""
        use = obj.copy(SESSION_COPY) if self._copies else obj
        self._keys[name][version] = LoadedKey(obj, use)
        self._active[name] = max(self._keys[name])

    def _scan(self, session: Any) -> dict[KeyName, dict[int, Any]]:
        found: dict[KeyName, dict[int, Any]] = {}
        query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: True}
        for obj in list(session.get_objects(query)):
            parsed = parse_label(str(obj.label))
            if parsed is None:
                continue
            name, version = parsed
            if version in found.setdefault(name, {}):
                raise HsmConfigurationError(
                    f"two objects in the token are labelled {key_label(name, version)}"
                )
            found[name][version] = obj
        return found

    def _checked(self, session: Any, name: KeyName, version: int, obj: Any) -> LoadedKey:
        """Token object `obj` checked against its template (keycheck) and ready to use."""
        check_key(obj, SPECS[name], version, self._vouched(session, name, version))
        return LoadedKey(obj, obj.copy(SESSION_COPY) if self._copies else obj)

    @staticmethod
    def _vouched(session: Any, name: KeyName, version: int) -> Vouched:
        label = key_label(name, version)
        return lambda obj: is_vouched(session, obj, name, label)

    def _load_new_keys(self, session: Any) -> None:
        """Load the versions the token holds that are not loaded yet, each checked as at start;
        what is loaded and which version is active stay as they are (activation is the
        operator's: `kmsnode keys activate`)."""
        for name, versions in sorted(self._scan(session).items()):
            loaded = self._keys[name]
            for version, obj in sorted(versions.items()):
                if version not in loaded:
                    loaded[version] = self._checked(session, name, version, obj)

    def _load_keys(self, session: Any) -> None:
        keys: dict[KeyName, dict[int, LoadedKey]] = {name: {} for name in KeyName}
        for name, versions in sorted(self._scan(session).items()):
            for version, obj in sorted(versions.items()):
                keys[name][version] = self._checked(session, name, version, obj)
        self._keys = keys
        self._active = {n: max(v) for n, v in keys.items() if v}
