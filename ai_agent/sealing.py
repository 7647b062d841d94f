# -*- test-case-name: tests.test_tenancy -*-
"""
Hidden turns sealed into the client's hands: how a hybrid Responses run
with C{store: false} keeps nothing on the server and still reaches its
continuation, on any instance.

The hidden turn (L{ai_agent.clienttools.HiddenTurn}) is encrypted and
authenticated with AES-256-GCM under the server's sealing key, bound to the
principal that ran it (associated data), and handed to the client as a
C{reasoning} item's C{encrypted_content}, as the Responses API carries
reasoning for stateless clients.  The client sends the item back with its
tools' results; the turn is opened from it and put back in place.

Sealing keys come from the configuration (C{"sealingKeys"}): the first
seals, every one opens, so a key is rotated by putting the new one first
and dropping the old one once no client holds an item it sealed.  Without a
configured key, a random one is made when the process starts: sealed turns
then open only on that process, until it restarts.  See docs/responses.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any, Mapping, Sequence

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ai_agent.clienttools import HiddenTurn, TurnStore

log = Logger()

#: What a sealed turn starts with: this server's items are told apart from
#: another server's opaque reasoning, which is left alone.
SEALED_PREFIX = "aiagent.v1."

#: Mixed into the key derivation and the associated data: a sealed turn is
#: nothing else this server might seal one day.
_PURPOSE = b"ai-agent hidden turn v1"

_NONCE = 12


class SealError(ValueError):
    """
    A sealed turn that cannot be opened: altered, sealed for another
    principal, or by a server with none of these keys.
    """


def _derive(secret: str | bytes) -> AESGCM:
    material = secret.encode("utf-8") if isinstance(secret, str) else secret
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(material)
    return AESGCM(key)


def _associated(owner: str) -> bytes:
    return _PURPOSE + b"\0" + owner.encode("utf-8")


@attrs.define(eq=False)
class Sealer:
    """
    Seals and opens hidden turns.

    @ivar generated: whether the key was made at random when the process
        started (no C{sealingKeys} configured).
    """

    _ciphers: tuple[AESGCM, ...] = attrs.field(repr=False)
    generated: bool = False
    _told: bool = attrs.field(default=False, init=False)

    @classmethod
    def fromSecrets(cls, secrets: Sequence[str]) -> Sealer:
        """
        A sealer with the configured keys (the first seals), or with a
        random key of this process's own when there are none.
        """
        if not secrets:
            return cls((_derive(os.urandom(32)),), generated=True)
        return cls(tuple(_derive(secret) for secret in secrets))

    def reconfigure(self, secrets: Sequence[str]) -> None:
        """
        After a reload: use the configured keys; with none, keep the key
        this process has (a random one made anew would lose every turn
        sealed so far).
        """
        if secrets:
            self._ciphers = Sealer.fromSecrets(secrets)._ciphers
            self.generated = False
        elif not self.generated:
            self._ciphers = Sealer.fromSecrets(())._ciphers
            self.generated = True
            self._told = False

    def seal(self, turn: HiddenTurn, owner: str) -> str:
        """
        C{turn}, sealed for the principal named C{owner}.
        """
        if self.generated and not self._told:
            self._told = True
            log.info(
                "sealing a hidden turn with this process's own key (no sealingKeys"
                " configured): it opens only on this process, until it restarts"
            )
        nonce = os.urandom(_NONCE)
        plain = json.dumps(turn.asJSON(), separators=(",", ":")).encode("utf-8")
        sealed = self._ciphers[0].encrypt(nonce, plain, _associated(owner))
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, text: str, owner: str) -> HiddenTurn:
        """
        The turn C{text} seals for the principal named C{owner}.

        @raise SealError: when no key opens it for that principal.
        """
        if not text.startswith(SEALED_PREFIX):
            raise SealError("not a turn this server sealed")
        try:
            raw = base64.urlsafe_b64decode(text[len(SEALED_PREFIX) :].encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise SealError("not valid base64") from None
        nonce, sealed = raw[:_NONCE], raw[_NONCE:]
        if len(nonce) < _NONCE or not sealed:
            raise SealError("too short")
        for cipher in self._ciphers:
            try:
                plain = cipher.decrypt(nonce, sealed, _associated(owner))
            except InvalidTag:
                continue
            try:
                return HiddenTurn.fromJSON(json.loads(plain))
            except (ValueError, TypeError) as error:
                raise SealError(f"unreadable: {error}") from None
        raise SealError("no sealing key opens it for this API key")


def isSealed(text: object) -> bool:
    """
    Whether C{text} is a turn this server sealed (as far as its form says).
    """
    return isinstance(text, str) and text.startswith(SEALED_PREFIX)


@attrs.define(eq=False)
class SealedTurns:
    """
    The turn store of one C{store: false} run
    (L{RunRequest.turns<ai_agent.request.RunRequest.turns>}): nothing is
    kept on the server.  A turn the run hands back is sealed (when the
    client asked for it, C{emit}) and waits in L{sealed} for the response
    to carry it; turns are found among those the client sent back
    (C{opened}), then in the server's store (C{fallback}, read only: a
    continuation of a stored run).
    """

    sealer: Sealer
    opened: Mapping[str, HiddenTurn] = attrs.field(factory=dict)
    fallback: TurnStore | None = None
    emit: bool = True
    sealed: list[str] = attrs.field(factory=list)

    def saveTurn(self, turn: HiddenTurn, owner: str = "") -> Deferred[None]:
        if self.emit:
            self.sealed.append(self.sealer.seal(turn, owner))
        return succeed(None)

    def findTurn(self, callIds: Sequence[str], owner: str = "") -> Deferred[HiddenTurn | None]:
        return self.findTurns([callIds], owner).addCallback(lambda turns: turns[0])

    def findTurns(
        self, callIdGroups: Sequence[Sequence[str]], owner: str = ""
    ) -> Deferred[list[HiddenTurn | None]]:
        turns: list[HiddenTurn | None] = [
            next((self.opened[i] for i in callIds if i in self.opened), None)
            for callIds in callIdGroups
        ]
        unopened = [n for n, turn in enumerate(turns) if turn is None]
        if not unopened or self.fallback is None:
            return succeed(turns)

        def found(stored: list[HiddenTurn | None]) -> list[HiddenTurn | None]:
            for n, turn in zip(unopened, stored, strict=True):
                turns[n] = turn
            return turns

        return self.fallback.findTurns([callIdGroups[n] for n in unopened], owner).addCallback(
            found
        )


def openedTurns(
    sealer: Sealer, items: Sequence[Mapping[str, Any]], owner: str
) -> dict[str, HiddenTurn]:
    """
    The turns sealed in C{items}' C{encrypted_content}, by handed-back
    call id.

    @raise SealError: (with the item's place, C{input[i]}, as its second
        argument) for a sealed item no key opens for C{owner}.
    """
    found: dict[str, HiddenTurn] = {}
    for index, item in enumerate(items):
        text = item.get("encrypted_content")
        if not isSealed(text):
            continue
        assert isinstance(text, str)
        try:
            turn = sealer.open(text, owner)
        except SealError as error:
            raise SealError(str(error), f"input[{index}]") from None
        for callId in turn.clientCallIds:
            found[callId] = turn
    return found


__all__ = [
    "SEALED_PREFIX",
    "SealError",
    "SealedTurns",
    "Sealer",
    "isSealed",
    "openedTurns",
]
