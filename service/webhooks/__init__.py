"""Webhooks: job notifications signed per tenant (Standard Webhooks), delivered by the worker."""
