"""Use cases of the node. Sans-I/O: depends only on ports (typing.Protocol) and firmware.mikey."""
