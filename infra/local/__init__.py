"""The embedded local stack behind ``make run``: everything of dit4c on one machine.

``python -m infra.local run`` starts moto (in-process, loopback) with the tables, queues, topics
and buckets of ``template.yaml``, serves the Chalice app, feeds it the events queue and the
reaper's schedule as Lambda would, and runs the edge router and one node daemon as child
processes. See docs/local-stack.md.
"""
