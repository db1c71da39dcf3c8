"""Control plane: the Chalice app (portal + scheduler API) and its domain modules."""
