"""Helper programs for the multi-process tests of waiting workflows (orchestrator
processes whose workflows wait for timers, events and signals, killed with SIGKILL
or stopped with SIGTERM, and a process that publishes an event or sends a signal)."""
