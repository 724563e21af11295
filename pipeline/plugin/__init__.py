"""The competition plugin API: the contract a plugin meets and the registry that finds plugins."""
