"""DVC stage entry points: ``python -m stages.<name>``. Each parses params, calls landscape/, writes outputs."""
