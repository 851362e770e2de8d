"""One client module per service: `policy`, `reward`, `feedback` (the experience store's FeedbackService).

Every program that calls a service (the trainer, the online loop, the load tester, the
benchmarks, the tests) goes through these, so retries, failover across replicas and the
weight-push protocol are written once. Layering: clients import only `services.common` and
the generated stubs; the programs import clients, never each other's clients.
"""
