"""Warrants for a test: active ones through AdminService, all deleted when the test ends.

Rules: a WarrantFactory deletes every warrant it made when it is closed (one test's warrants never
leak into the next); LIIDs are unique unless the test names one; calls carry deadlines.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc

DEADLINE = 30.0


def _timestamp(unix: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(unix * 1e9))
    return ts


class WarrantFactory:
    """`factory(target)`: an active warrant for `target` through AdminService (see the module
    rules); returns the kms.v1 Warrant the node stored."""

    def __init__(self, admin: kms_pb2_grpc.AdminServiceStub, df2: Sequence[str]) -> None:
        self._admin = admin
        self._df2 = list(df2)
        self.liids: list[str] = []

    def __call__(
        self,
        target: str,
        *,
        df2: Sequence[str] | None = None,
        liid: str | None = None,
        valid_from: float | None = None,
        valid_until: float | None = None,
    ) -> Any:
        """`df2`: DF2 certificate identities (default: the node's DF2 client); the window
        defaults to a minute ago until an hour from now (Unix times)."""
        now = time.time()
        warrant = self._admin.PutWarrant(
            kms_pb2.Warrant(
                liid=liid or f"LIID-{uuid.uuid4().hex[:16]}",
                target_identity=target,
                valid_from=_timestamp(now - 60 if valid_from is None else valid_from),
                valid_until=_timestamp(now + 3600 if valid_until is None else valid_until),
                df2_identities=self._df2 if df2 is None else list(df2),
            ),
            timeout=DEADLINE,
        )
        self.liids.append(warrant.liid)
        return warrant

    def close(self) -> None:
        for liid in self.liids:
            try:
                self._admin.DeleteWarrant(kms_pb2.DeleteWarrantRequest(liid=liid), timeout=DEADLINE)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:  # the test deleted it itself
                    raise
        self.liids.clear()
