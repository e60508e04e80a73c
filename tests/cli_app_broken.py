"""A module that fails while being imported, for the command-line tests."""

raise RuntimeError("cannot read the configuration\nat /etc/myshop.toml")
