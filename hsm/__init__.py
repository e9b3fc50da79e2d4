"""PKCS#11 adapter (python-pkcs11) implementing the core's KeyVault port."""
