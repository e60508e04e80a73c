"""Orchestration: sagas whose steps are compensated in reverse when one fails.

An :class:`Orchestrator` subclass declares its steps (local :class:`Step`
functions, :class:`Remote` commands to other services, :class:`Parallel`
groups); the engine runs them forward, checkpoints every transition in a
state store, compensates the steps that acted when one fails, and resumes
unfinished workflows after a crash. Waits (:class:`Sleep`,
:class:`WaitForEvent`, :class:`WaitForSignal`) park a workflow in the store
until it is due. A :class:`SagaObserver` sees every transition (for logs,
metrics, traces) and can intercept the calls of steps.
"""

from .._errors import DeadlineExceeded as DeadlineExceeded
from .._errors import InvalidWorkflowState as InvalidWorkflowState
from .._errors import OrchestratorNotStarted as OrchestratorNotStarted
from .._errors import ResultNotAvailable as ResultNotAvailable
from .._errors import StepTimeout as StepTimeout
from .._errors import WaitTimeout as WaitTimeout
from .._errors import WorkflowCancelled as WorkflowCancelled
from ._context import StepContext as StepContext
from ._declare import Parallel as Parallel
from ._declare import Remote as Remote
from ._declare import Step as Step
from ._engine import Requester as Requester
from ._model import Outcome as Outcome
from ._model import StepError as StepError
from ._model import StepInfo as StepInfo
from ._model import StepStatus as StepStatus
from ._model import Transition as Transition
from ._model import WorkflowInfo as WorkflowInfo
from ._model import WorkflowStatus as WorkflowStatus
from ._observe import SagaObserver as SagaObserver
from ._observe import StepEvent as StepEvent
from ._observe import WorkflowEvent as WorkflowEvent
from ._orchestrator import Orchestrator as Orchestrator
from ._waits import OnTimeout as OnTimeout
from ._waits import Sleep as Sleep
from ._waits import WaitForEvent as WaitForEvent
from ._waits import WaitForSignal as WaitForSignal

__all__ = [
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
]
