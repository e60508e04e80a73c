"""Testing kit: run buses in memory, inject faults, and prove new backends conform.

* :func:`run_in_memory` runs a bus on the in-memory transport and returns a
  :class:`BusHarness` to wait for and assert on published events and to make
  handlers fail;
* :class:`FaultyTransport` wraps any transport to drop consumers, duplicate,
  delay or fail publishes;
* :class:`FaultPlan` makes the steps of your own sagas fail, time out or
  "crash" the process at a chosen point, and :func:`assert_compensation_order`
  checks what was undone;
* :func:`check_transport` and :func:`check_store` are the conformance suites
  every transport and every store must pass.

The pytest plugin (installed with flowkit) adds the ``memory_transport`` and
``memory_store`` fixtures.
"""

from ._faults import FaultyTransport as FaultyTransport
from ._harness import BusHarness as BusHarness
from ._harness import run_in_memory as run_in_memory
from ._sagas import FaultPlan as FaultPlan
from ._sagas import InjectedFault as InjectedFault
from ._sagas import Injection as Injection
from ._sagas import SimulatedCrash as SimulatedCrash
from ._sagas import assert_compensation_order as assert_compensation_order
from ._store_suite import STORE_CHECKS as STORE_CHECKS
from ._store_suite import check_store as check_store
from ._transport_suite import TRANSPORT_CHECKS as TRANSPORT_CHECKS
from ._transport_suite import check_transport as check_transport

__all__ = [
    "STORE_CHECKS",
    "TRANSPORT_CHECKS",
    "BusHarness",
    "FaultPlan",
    "FaultyTransport",
    "InjectedFault",
    "Injection",
    "SimulatedCrash",
    "assert_compensation_order",
    "check_store",
    "check_transport",
    "run_in_memory",
]
