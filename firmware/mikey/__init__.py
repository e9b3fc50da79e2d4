"""Sans-I/O MIKEY (RFC 3830) and MIKEY-TICKET (RFC 6043): bytes in, dataclasses out; PRF, KEMAC, MAC.

No sockets, no HSM, no clock: time and randomness come in as arguments.
"""
