"""Finding the leading master from etcd.

Agents and frameworks may be given the etcd endpoints instead of the masters:
`etcd://HOST:PORT[,HOST:PORT...][/CLUSTER]` (CLUSTER defaults to `default`,
as `master --cluster` does). The elected master writes its advertised address
into the election key `/corral/<CLUSTER>/leader` (master/election.py); a client
reads it afresh before every connection attempt, so it follows failovers.
"""

from __future__ import annotations

import json
import logging

from corral.etcd import Etcd, EtcdUnavailable, parse_endpoints
from corral.ids import InvalidId, check_id

logger = logging.getLogger(__name__)

SCHEME = "etcd://"
DEFAULT_CLUSTER = "default"


def election_key(cluster: str) -> str:
    """The key whose value names the leader of `cluster`."""
    return f"/corral/{cluster}/leader"


def is_etcd(spec: str) -> bool:
    return spec.strip().startswith(SCHEME)


def parse(spec: str) -> tuple[str, str]:
    """Split `etcd://h1:2379,h2:2379/cluster` into the endpoints URL and the
    cluster's name; ValueError names what is wrong."""
    body = spec.strip().removeprefix(SCHEME)
    endpoints, _, cluster = body.partition("/")
    url = SCHEME + endpoints
    parse_endpoints(url)
    cluster = cluster or DEFAULT_CLUSTER
    try:
        check_id("cluster", cluster)
    except InvalidId as exc:
        raise ValueError(f"{spec!r}: {exc}") from None
    return url, cluster


def leader_address(value: bytes) -> str:
    """The address in the election key's value; empty when Corral did not write it."""
    try:
        return str(json.loads(value)["address"])
    except (ValueError, KeyError, TypeError):
        return ""


async def find_leader(spec: str) -> str | None:
    """The leader's address named in etcd, or None when there is none (no
    leader elected right now, or etcd unreachable: both are logged)."""
    url, cluster = parse(spec)
    etcd = Etcd.from_url(url)
    try:
        kv = await etcd.get(election_key(cluster))
    except EtcdUnavailable as exc:
        logger.warning("cannot read the leader from %s: %s", url, exc)
        return None
    finally:
        await etcd.close()
    address = leader_address(kv.value) if kv is not None else ""
    if not address:
        logger.info("no leader of cluster %r is named in %s yet", cluster, url)
    return address or None
