"""The README's DF2 example, verbatim below this docstring (tests/plugin keeps the two equal)."""

import grpc
import pytest

from kmsnode_pytest import kms_pb2


def test_my_df2_gets_keys_only_under_a_warrant(kms_user_pair, kms_warrant, kms_df2, kms_alarms):
    call = kms_user_pair.call()  # alice calls bob through the KMS (MIKEY-TICKET over TLS)
    ask = kms_pb2.GetKeysRequest(target_identity=call.responder.identity, liid="LI-1")
    ask.target_role, ask.correlation_id = kms_pb2.TARGET_ROLE_RESPONDER, "corr-1"
    ask.transfer_init, ask.transfer_resp = call.transfer_init, call.transfer_resp
    with pytest.raises(grpc.RpcError):  # no warrant for bob yet: refused, and an alarm says so
        kms_df2.GetKeys(ask, timeout=10)
    assert kms_alarms.wait_for("corr-1").reason == "NO_ACTIVE_WARRANT"
    ask.liid = kms_warrant(call.responder.identity).liid  # a warrant for bob, for our DF2
    keys = kms_df2.GetKeys(ask, timeout=10)
    assert [(s.cs_id, s.session_key, s.salt) for s in keys.sessions] == call.responder_keys
