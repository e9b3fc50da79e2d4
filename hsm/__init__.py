"""PKCS#11 adapter (python-pkcs11) implementing the core's KeyVault port.

Modules: vault (Pkcs11Vault, VaultSettings, PKCS11_LOCK, describe), fake (FakeVault), hotplug
(HotplugWatcher, UdevMatch), uri (RFC 7512 parsing), pin (PinSource), templates (key templates,
required mechanisms), keycheck (what a key must be before the node uses it), errors (the one
PKCS#11 error mapping), softhsm (throw-away tokens).
Importing this package loads nothing; only hsm.vault and the modules it uses import python-pkcs11.
"""
