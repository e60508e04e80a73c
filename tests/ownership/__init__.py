"""Helper programs for the multi-process ownership tests (orchestrator processes that
share one store, killed with SIGKILL or stopped with SIGTERM)."""
