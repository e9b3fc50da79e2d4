"""kmsnode firmware: the KMS node (MIKEY-TICKET, RFC 6043; 3GPP TS 33.328) and its Xk interface."""
