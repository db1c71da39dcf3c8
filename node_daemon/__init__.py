"""Node daemon: enrolment, credentials, queue polling, pods over the Docker API."""
