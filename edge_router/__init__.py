"""Edge router: the public HTTP(S) server, tunnel endpoint, route table and revocations."""
