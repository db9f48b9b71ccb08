"""A small function app used only by tests/test_host.py: one function per trigger kind the local host serves."""
