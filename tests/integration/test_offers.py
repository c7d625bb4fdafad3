"""Offers through a real master: timeouts and RESCIND, decline filters,
suppress and revive, and DRF weights across roles."""

from __future__ import annotations

import queue

import pytest

from corral.testing import Cluster
from corral.v1 import scheduler_pb2
from tests.rawclient import RawFramework, launch, task_info

pytestmark = pytest.mark.integration


def no_offers_within(fw: RawFramework, seconds: float) -> bool:
    """True when no OFFERS event arrives for `seconds` (a bounded negative check)."""
    try:
        fw.wait("offers", timeout=seconds)
    except queue.Empty:
        return True
    return False


def test_an_unanswered_offer_is_rescinded_and_offered_again(cluster: Cluster) -> None:
    cluster.start_master("--offer-timeout", "1")
    cluster.start_agent()
    cluster.wait_agents(1)
    fw = RawFramework(cluster.master_address)
    try:
        fw.subscribe()
        (offer,) = fw.offers()
        rescind = fw.wait("rescind", timeout=10).rescind
        assert rescind.offer_id == offer.id
        (again,) = fw.offers(timeout=10)
        assert again.id != offer.id
        assert again.agent_id == offer.agent_id
        assert list(again.resources) == list(offer.resources)
    finally:
        fw.close()


def test_declined_resources_are_filtered_until_revive(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    fw = RawFramework(cluster.master_address)
    try:
        fw.subscribe()
        (offer,) = fw.offers()
        fw.call("Decline", offer_ids=[offer.id], filters=scheduler_pb2.Filters(refuse_seconds=600))
        assert no_offers_within(fw, 1.5), "declined resources came back before refuse_seconds"
        fw.call("Revive")
        (again,) = fw.offers(timeout=5)
        assert again.agent_id == offer.agent_id
    finally:
        fw.close()


def test_declined_resources_come_back_after_refuse_seconds(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    fw = RawFramework(cluster.master_address)
    try:
        fw.subscribe()
        (offer,) = fw.offers()
        fw.call("Decline", offer_ids=[offer.id], filters=scheduler_pb2.Filters(refuse_seconds=1))
        (again,) = fw.offers(timeout=5)
        assert again.agent_id == offer.agent_id
    finally:
        fw.close()


def test_suppress_stops_offers_until_revive_and_leftovers_return(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_agent(resources="cpus:2;mem:1024")
    cluster.wait_agents(1)
    fw = RawFramework(cluster.master_address)
    try:
        fw.subscribe()
        (offer,) = fw.offers()
        fw.call("Suppress")
        fw.call(
            "Accept",
            offer_ids=[offer.id],
            operations=launch(task_info("t", offer.agent_id, "sleep 60", cpus=1)),
            filters=scheduler_pb2.Filters(refuse_seconds=0),
        )
        assert no_offers_within(fw, 1.5), "a suppressed framework got offers"
        fw.call("Revive")
        (rest,) = fw.offers(timeout=5)
        cpus = {r.name: r.scalar for r in rest.resources}["cpus"]
        assert cpus == pytest.approx(1.0), "the leftover of the accepted offer should come back, and only it"
    finally:
        fw.close()


def test_drf_weights_split_a_contended_cluster_by_role(cluster: Cluster) -> None:
    """Two frameworks that take everything they are offered, in roles weighted
    3:1, end up holding about three quarters and a quarter of the cpus."""
    cluster.start_master("--weights", "heavy:3;light:1")
    heavy = RawFramework(cluster.master_address, name="heavy", roles=("heavy",))
    light = RawFramework(cluster.master_address, name="light", roles=("light",))
    held = {"heavy": 0, "light": 0}
    try:
        # Both compete before any resource exists: each agent, as it joins,
        # goes to the role with the lower weighted share.
        heavy.subscribe()
        light.subscribe()
        for _ in range(8):
            cluster.start_agent(resources="cpus:1;mem:256")
        cluster.wait_agents(8)
        pending = {"heavy": heavy, "light": light}
        for _ in range(200):
            if sum(held.values()) == 8:
                break
            for name, fw in pending.items():
                try:
                    event = fw.next_event(timeout=0.2)
                except queue.Empty:
                    continue
                for offer in event.offers.offers if event.HasField("offers") else ():
                    cpus = sum(r.scalar for r in offer.resources if r.name == "cpus")
                    if cpus < 1:  # what is left beside a task already running there
                        fw.call(
                            "Decline", offer_ids=[offer.id], filters=scheduler_pb2.Filters(refuse_seconds=600)
                        )
                        continue
                    task = task_info(f"{name}-{offer.agent_id}", offer.agent_id, "sleep 120", cpus=1, mem=32)
                    fw.call("Accept", offer_ids=[offer.id], operations=launch(task))
                    held[name] += 1
        assert held == {"heavy": 6, "light": 2}
    finally:
        heavy.close()
        light.close()
