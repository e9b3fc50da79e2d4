"""Sans-I/O MIKEY (RFC 3830) and MIKEY-TICKET (RFC 6043): bytes in, dataclasses out.

No sockets, no HSM, no clock: time (T payloads) and randomness (RANDs, MPK/TGK) come in as
arguments; keys held elsewhere come in as an HMAC port ``mac(data) -> HMAC(key, data)``.

Modules and public API
----------------------
``constants``  IntEnums named as in the RFC registries (DataType, PayloadType, EncrAlg, MacAlg,
               TsType, TsRole, IdType, IdRole, RandRole, KeyDataType, KvType, ErrNo, ...) and the
               key-derivation constants.
``errors``     ``MikeyError(message, offset, err: ErrNo)`` - the only exception the codec raises.
``codec``      the facade the node imports payloads from; it re-exports the three below.
``buffer``     the bounds-checked ``Reader`` and the writer-side checks (aioquic buffer.py style).
``payloads``   one frozen dataclass per payload: Header (+ SrtpIdMap / EmptyMap / GenericIdMap),
               Timestamp (T), RoleTimestamp (TR), Rand, RoleRand (RANDR), Identity (ID),
               RoleIdentity (IDR), Certificate, CertHash, Kemac, KeyData (+ KvNull/KvSpi/
               KvInterval), Pke, Dh, Signature, Verification (V), SecurityPolicy (+PolicyParam),
               ErrorPayload, GeneralExtension, TicketPolicy (TP, flags ``TpFlags``), Ticket,
               TicketData/TicketHeader (base ticket); ``PAYLOAD_TYPES``.
``wire``       the parse/serialize pairs (``PARSERS``, ``SERIALIZERS``), the payload chain,
               ``parse_key_data``/``serialize_key_data``, ``parse_ticket_data``/
               ``serialize_ticket_data``.
``message``    ``Message(header, payloads)`` with ``raw``/``offsets`` of the received bytes;
               ``decode(bytes) -> Message``, ``encode(Message) -> bytes``; MAC coverage of RFC 6043
               Table 5.2: ``mac_input``, ``coverage``, ``appended_identities``,
               ``ticket_mac_input``.
``crypto``     ``fast_prf`` (= prf.prf), K1/K2 ``message_keys``/``auth_key``, K3 ``tek``/
               ``tek_salt``, K4 ``vr_auth_key``, K5 ``ticket_keys``, K6 ``mpk_split``, K7
               ``fork_mpkr``/``fork_tgk``; ``kemac_crypt`` (AES-CM-128/256, AES-KW-128),
               ``compute_mac``/``check_mac``.
``ticket``     base ticket: ``seal_ticket``, ``peek_ticket`` (THDR data before verification, e.g.
               the TPK version), ``open_ticket -> OpenedTicket`` (MPK, MPKi, MPKr, keys, policy,
               IDRi, IDRr list, TRs/TRe, THDR data); ``check_policy`` (flag consistency),
               ``within_validity``, ``ntp_seconds``/``ntp_bytes``.
``transfer``   ``verify_v`` (any message, K1/K2), ``verify_transfer_init`` (MPKi),
               ``verify_transfer_resp`` (MPKi or MPKr'), ``forked_mpkr_for``, ``fork_keys``,
               ``check_vi``, ``session_keys -> [SessionKey(cs_id, tek, salt)]`` - what Xk uses.
``kms``        ``verify_initial_psk``, ``build_request_resp``, ``build_resolve_resp`` (forking),
               ``build_error``/``verify_error``, ``verify_initiator_data`` (Vr), ``sign_message``.
``exchange``   UE roles ``Initiator`` / ``Responder`` (sans-I/O), ``open_kemac``.
``sdp``        ``find_key_mgmt``, ``key_mgmt_line``, ``add_key_mgmt`` (RFC 4567).
``prf``        ``PrfFunc``, ``prf``, ``prf_with_hmac``, ``p_chain``, ``hmac_digest``.

Choices where the RFCs leave doubt (details in the module docstrings)
---------------------------------------------------------------------
- Q4 (T in the AES-CM IV of a response's KEMAC): the T of the message carrying the KEMAC.
- Q5 (PRF): HDR PRF func for K1/K2/K3; Ticket Policy PRF func for K4..K7.
- Q6 (identities appended to MAC inputs): the IDR payload's ID Data when present, else the
  caller-supplied value (e.g. the configured KMS identity), else nothing.
- Unknown payload types are refused (their length is unknown); known payloads in unexpected places
  are kept, so callers can ignore them as RFC 6043 asks.

Typical KMS use (ticket request)::

    req = decode(body)                              # MikeyError -> answer build_error(...)
    verify_initial_psk(req, psk, kms_identity=KMS)  # K1 over received bytes || IDi || IDkms
    ticket = seal_ticket(granted, tpk=hsm_hmac, thdr_data=version, t=t, rand=rand, mpk=mpk,
                         session_keys=[tgk])
    mpki, mpkr = mpk_split(granted.prf_func, mpk, rand)
    return build_request_resp(req, psk, t=t_now, ticket=ticket, mpki=mpki, mpkr=mpkr_if_forking,
                              session_keys=[tgk], kms_identity=KMS)
"""
