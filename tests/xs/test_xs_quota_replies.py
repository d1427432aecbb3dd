"""The daemons' quota replies, parsed (sans-IO): C xenstored 4.17's and 4.22's CONTROL ``quota`` and
``quota <domid>`` (texts as Debian's 4.17 daemon sent them, and as 4.22's ``domain.c`` prints them), and
oxenstored's one line."""

from __future__ import annotations

import pytest

from actors.xs.errors import ProtocolError
from actors.xs.quota import DomainQuota, parse_domain_use, parse_limits, parse_oxenstored

LIMITS_417 = (
    b"Quota settings:\nnodes            :     1000 Nodes per domain\nwatches          :      128 Watches per domain\n"
    b"transactions     :       10 Transactions per domain\noutstanding      :       20 Outstanding requests per"
    b" domain\ntransaction-nodes:     1024 Max. number of accessed nodes per transaction\nmemory           :"
    b"  2621440 Total Xenstore memory per domain (error level)\nnode-size        :     2048 Max. size of a node\n"
    b"path-max         :     2048 Max. length of a node path\npermissions      :        5 Max. number of"
    b" permissions per node\n\0"
)
USE_417 = (
    b"Domain 5:\nnodes           :        4\nwatches         :        1\ntransactions    :        1\n"
    b"outstanding     :        0\nmemory          :      225\n\0"
)
USE_422 = (
    b"Domain 5:\nnodes            :        4 (max        6)\nwatches          :      129 (max      129)\n"
    b"outstanding      :        0 (max        2)\nmemory           :      225 (max      300)\n"
    b"transactions     :       11 (max       11)\ntransaction-nodes:        0 (max        0)\n"
    b"node-permissions :        0 (max        0)\npath-max         :        0 (max        0)\n"
    b"node-size        :        0 (max        0)\n\0"
)


def test_c_xenstored_limits_keep_the_domain_wide_resources() -> None:
    assert parse_limits(LIMITS_417) == {
        "nodes": 1000,
        "watches": 128,
        "transactions": 10,
        "outstanding": 20,
        "memory": 2621440,
    }


def test_a_domains_use_in_both_forms() -> None:
    assert parse_domain_use(USE_417, 5) == {
        "nodes": 4,
        "watches": 1,
        "transactions": 1,
        "outstanding": 0,
        "memory": 225,
    }
    # 4.22: the use, not the highest value seen; the per-request items are left out
    assert parse_domain_use(USE_422, 5) == {
        "nodes": 4,
        "watches": 129,
        "outstanding": 0,
        "memory": 225,
        "transactions": 11,
    }


def test_oxenstored_tells_nodes_only() -> None:
    assert parse_oxenstored(b"dom5 quota: 12/1000\0", 5) == (12, 1000)
    assert parse_oxenstored(b"dom7 quota: not set", 7) == (0, None)


@pytest.mark.parametrize(
    ("parse", "reply"),
    [
        (lambda r: parse_limits(r), b"OK\0"),  # oxenstored's answer to a bare "quota"
        (lambda r: parse_domain_use(r, 5), USE_417.replace(b"Domain 5", b"Domain 6")),
        (lambda r: parse_oxenstored(r, 5), b"dom6 quota: 1/1000"),
        (lambda r: parse_oxenstored(r, 5), USE_417),
    ],
)
def test_what_is_not_a_quota_reply_is_a_protocol_error(parse: object, reply: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(reply)  # type: ignore[operator]


def test_shares() -> None:
    quota = DomainQuota(5, {"nodes": 10, "watches": 120, "memory": 9}, {"nodes": 1000, "watches": 128})
    assert quota.share("watches") == 120 / 128 and quota.share("memory") is None
    assert quota.highest == ("watches", 120 / 128)
    assert DomainQuota(5, {"nodes": 1}).highest is None
