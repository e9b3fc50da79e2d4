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
               ``decode(bytes, limits=UE_LIMITS) -> Message`` (``DecodeLimits``: size and payload
               bounds before the MAC check), ``encode(Message) -> bytes``; MAC coverage of
               RFC 6043 Table 5.2: ``mac_input``, ``coverage``, ``appended_identities``,
               ``identity_candidates``, ``ticket_mac_input``; ``kemac_iv_t``; the Q4 / Q6
               constants ``KEMAC_IV_T``, ``ABSENT_IDENTITY``, ``ABSENT_IDENTITY_ACCEPTED``.
``rules``      keyless message rules: ``check_required_payloads`` (RFC 6043 4.2 compositions),
               ``check_header_rules`` (#CS / map type / GENERIC-ID answers), ``check_algorithms``
               (12.1 strength), ``check_message`` (all three).
``crypto``     ``fast_prf`` (= prf.prf), K1/K2 ``message_keys``/``auth_key``, K3 ``tek``/
               ``tek_salt``, K4 ``vr_auth_key``, K5 ``ticket_keys``, K6 ``mpk_split``, K7
               ``fork_mpkr``/``fork_tgk``; ``kemac_crypt`` (AES-CM-128/256, AES-KW-128),
               ``compute_mac``/``check_mac``/``mac_matches``; ``check_strength``, ``mac_for``,
               ``encr_for`` (12.1).
``ticket``     base ticket: ``seal_ticket`` (SPIs, RAND length, strength), ``peek_ticket`` (THDR
               data before verification, e.g. the TPK version), ``open_ticket -> OpenedTicket``
               (MPK, MPKi, MPKr, keys, policy, IDRi, IDRr list, TRs/TRe, THDR data);
               ``check_policy`` (flag consistency), ``within_validity``, ``ntp_seconds``/
               ``ntp_bytes``.
``transfer``   ``verify_v`` (any message, K1/K2), ``verify_transfer_init`` (MPKi),
               ``verify_transfer_resp`` (MPKi or MPKr'; same PRF and CSB ID), ``forked_mpkr_for``,
               ``fork_keys``, ``check_vi``, ``open_kemac``/``seal_kemac``/``supplied_keys``
               (UE-supplied keys, L/M), ``crypto_sessions``/``policy_lengths``,
               ``session_keys -> [SessionKey(cs_id, tek, salt, spi)]`` - what Xk uses.
``kms``        ``verify_initial_psk``, ``check_rand_strength``, ``build_request_resp``,
               ``build_resolve_resp`` (forking; SPIs per key), ``build_error``/``verify_error``,
               ``verify_initiator_data`` (Vr), ``sign_message``.
``exchange``   UE roles ``Initiator`` / ``Responder`` (sans-I/O); ``open_kemac`` (re-exported).
``sdp``        ``find_key_mgmt``, ``key_mgmt_line``, ``add_key_mgmt`` (RFC 4567).
``prf``        ``PrfFunc``, ``prf``, ``prf_with_hmac``, ``p_chain``, ``hmac_digest``.

Choices where the RFCs leave doubt (details in the module docstrings)
---------------------------------------------------------------------
- Q4 (T in the AES-CM IV of a response's KEMAC): the T of the message carrying the KEMAC
  (``message.KEMAC_IV_T``).
- Q5 (PRF): HDR PRF func for K1/K2/K3; Ticket Policy PRF func for K4..K7.
- Q6 (identities appended to MAC inputs): the IDR payload's ID Data when present, else the
  caller-supplied value (e.g. the configured KMS identity), else nothing
  (``message.ABSENT_IDENTITY``); verification also accepts the ticket's (or requested policy's)
  identity of an omitted role (``ABSENT_IDENTITY_ACCEPTED``).
- Unknown payload types are refused (their length is unknown); known payloads in unexpected places
  are kept, so callers can ignore them as RFC 6043 asks; unregistered roles, ID types and error
  numbers parse to raw ints; an unknown data type is ERR 13 (RFC 4738).
- Key and salt lengths of a crypto session come from its SRTP policy (16/14 without one);
  UE-supplied keys (L/M) are opened with the MPK-derived keys and replace the ticket's.

Typical KMS use (ticket request)::

    req = decode(body, limits=UE_LIMITS)            # MikeyError -> answer build_error(...)
    check_message(req)                              # header rules, payloads, strength
    verify_initial_psk(req, psk, kms_identity=KMS)  # K1 over received bytes || IDi || IDkms
    check_rand_strength(req, len(psk))              # RFC 6043 12.1
    ticket = seal_ticket(granted, tpk=hsm_hmac, thdr_data=version, t=t, rand=rand, mpk=mpk,
                         session_keys=[tgk], mpk_spi=spi_mpk, key_spis=[spi_tgk])
    mpki, mpkr = mpk_split(granted.prf_func, mpk, rand)
    return build_request_resp(req, psk, t=t_now, ticket=ticket, mpki=mpki, mpkr=mpkr_if_forking,
                              session_keys=[tgk], mpki_spi=spi_mpk, mpkr_spi=spi_mpk,
                              key_spis=[spi_tgk], kms_identity=KMS)
"""
