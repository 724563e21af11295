"""The competition plugin API (api.py), the contract that checks a plugin against it (contract.py) and the
registry that finds plugins by name (registry.py)."""
