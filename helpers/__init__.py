"""Helper programs that run inside each pod beside the user tool."""
