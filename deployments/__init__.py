"""Entry points that run dsrflow as a service: the callback endpoint, and (to come) the
Prefect deployments for intake and schedules."""
