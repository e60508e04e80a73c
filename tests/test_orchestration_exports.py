"""The public surface of flowkit.orchestration and of the saga testing kit."""

from __future__ import annotations

import flowkit.orchestration
import flowkit.testing._sagas


def test_orchestration_exports_exactly_the_public_names() -> None:
    public = {n for n in dir(flowkit.orchestration) if not n.startswith(("_", "@"))}
    assert set(flowkit.orchestration.__all__) == public
    assert set(flowkit.orchestration.__all__) == {
        "DeadlineExceeded",
        "InvalidWorkflowState",
        "OnTimeout",
        "Orchestrator",
        "OrchestratorNotStarted",
        "Outcome",
        "Parallel",
        "Remote",
        "Requester",
        "ResultNotAvailable",
        "SagaObserver",
        "Sleep",
        "Step",
        "StepContext",
        "StepError",
        "StepEvent",
        "StepInfo",
        "StepStatus",
        "StepTimeout",
        "Transition",
        "WaitForEvent",
        "WaitForSignal",
        "WaitTimeout",
        "WorkflowCancelled",
        "WorkflowEvent",
        "WorkflowInfo",
        "WorkflowStatus",
    }


def test_the_saga_testing_kit_names() -> None:
    assert set(flowkit.testing._sagas.__all__) == {
        "FaultPlan",
        "InjectedFault",
        "Injection",
        "SimulatedCrash",
        "assert_compensation_order",
    }
    for name in flowkit.testing._sagas.__all__:
        assert getattr(flowkit.testing._sagas, name) is not None


def test_a_fault_plan_is_a_saga_observer() -> None:
    assert issubclass(flowkit.testing._sagas.FaultPlan, flowkit.orchestration.SagaObserver)


def test_orchestration_errors_are_flowkit_errors() -> None:
    from flowkit import FlowkitError

    for name in (
        "DeadlineExceeded",
        "InvalidWorkflowState",
        "OrchestratorNotStarted",
        "ResultNotAvailable",
        "StepTimeout",
        "WorkflowCancelled",
    ):
        assert issubclass(getattr(flowkit.orchestration, name), FlowkitError)
