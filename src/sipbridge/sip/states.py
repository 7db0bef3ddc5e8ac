"""The base of the enums that key the state tables (`sip/transaction.py`, `sip/ua/invite.py`).

Every SIP message looks up (state, input) pairs in those tables, tens of times per call.
`Enum.__hash__` hashes the member's name in Python code (a function call per lookup); members
are singletons compared by identity, so identity is a correct hash and costs nothing.
"""

from __future__ import annotations

from enum import Enum


class StateEnum(Enum):
    __hash__ = object.__hash__
