"""Job handlers, one module per kind family. Each kind's declaration (service/kinds.py) names
its handler here as "worker.jobs.<module>:<function>"; a handler takes a
`worker.context.JobContext` and returns the stored result (object keys, not URLs)."""
