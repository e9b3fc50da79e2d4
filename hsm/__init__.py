"""PKCS#11 adapter (python-pkcs11) implementing the core's KeyVault port.

Modules: vault (Pkcs11Vault, VaultSettings: the port's operations through one helper),
connection (library, logged-in session, key loading), monitor (availability: loss, probe,
recovery, listeners), lock (PKCS11_LOCK, the one process-wide lock), keycheck (what a key must be
before the node uses it), direct (the hot calls with the GIL held), templates (key templates,
required mechanisms), errors (the one PKCS#11 error mapping), uri (RFC 7512 parsing), pin
(PinSource), fake (FakeVault), hotplug (HotplugWatcher, UdevMatch), softhsm (throw-away tokens).
Importing this package loads nothing; only hsm.vault and the modules it uses import python-pkcs11.
"""
