"""Helper programs for the crash tests (run as child processes, killed with SIGKILL)."""
