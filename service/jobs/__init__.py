"""The /jobs domain: submit, inspect, cancel, and read results of selection jobs."""
