"""`corral leader`: which master leads, since when, in which term, after how many failovers.

Any master answers (standbys too: they name the leader), so `--master` may
list several; the first that answers is asked. With `--etcd` the election key
is read from etcd itself, which works even when no master answers.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from corral.cli import common
from corral.discovery import election_key
from corral.etcd import Etcd, EtcdUnavailable, parse_endpoints
from corral.v1 import common_pb2
from master.election import decode_leader


def describe(info: common_pb2.LeaderInfo) -> str:
    """One line about the leader; says so when nobody leads."""
    if not info.address:
        return "no master leads right now (an election may be under way)"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.since)) if info.since else "?"
    who = f"{info.address} ({info.master_id})" if info.master_id else info.address
    return f"{who}, term {info.term}, leading since {since}; failovers seen: {info.failovers}"


def from_masters(addresses: str) -> common_pb2.LeaderInfo:
    """The leader as the first master that answers sees it."""
    errors = []
    for address in filter(None, (a.strip() for a in addresses.split(","))):
        try:
            state = common.fetch_state(address)
        except common.CliError as error:
            errors.append(str(error))
            continue
        if state.leading and not state.leader.address:
            # A single master without etcd: it leads, term 0.
            return common_pb2.LeaderInfo(
                address=state.master.address, master_id=state.master.id, since=state.master.start_time
            )
        return state.leader
    raise common.CliError("; ".join(errors) or f"no master address in {addresses!r}", common.EXIT_UNREACHABLE)


async def from_etcd(url: str, cluster: str) -> common_pb2.LeaderInfo:
    """The leader named by the election key in etcd (no failover count: masters keep that)."""
    etcd = Etcd.from_url(url)
    try:
        kv = await etcd.get(election_key(cluster))
    except EtcdUnavailable as exc:
        raise common.CliError(f"cannot read the leader from etcd: {exc}", common.EXIT_UNREACHABLE) from None
    finally:
        await etcd.close()
    if kv is None:
        return common_pb2.LeaderInfo()
    leader = decode_leader(kv.value, kv.create_revision)
    return common_pb2.LeaderInfo(
        address=leader.address, master_id=leader.master_id, since=leader.since, term=leader.term
    )


def handle(args: argparse.Namespace) -> int:
    if args.etcd:
        try:
            parse_endpoints(args.etcd)
        except ValueError as exc:
            raise common.CliError(str(exc)) from None
        info = asyncio.run(from_etcd(args.etcd, args.cluster))
    else:
        info = from_masters(args.master)
    common.emit(describe(info))
    return 0 if info.address else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], default_master: str) -> None:
    parser = subparsers.add_parser("leader", help="print which master leads")
    common.add_master_argument(parser, default_master)
    parser.add_argument(
        "--etcd",
        metavar="etcd://HOST:PORT[,...]",
        default="",
        help="read the election key from etcd instead of asking a master",
    )
    parser.add_argument("--cluster", default="default", help="the cluster's name in etcd (with --etcd)")
    parser.set_defaults(handler=handle)
