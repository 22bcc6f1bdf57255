"""The API's paths to a job, its results and a proxy: written into job reads and job results
(by the worker), so they are spelled once here."""

from __future__ import annotations


def job_path(job_id: str) -> str:
    return f"/jobs/{job_id}"


def proxy_path(proxy_id: str) -> str:
    return f"/proxies/{proxy_id}"


def job_links(job_id: str) -> dict[str, str]:
    """The ``links`` of a job read: itself and what can be done with it."""
    base = job_path(job_id)
    return {
        "self": base,
        "events": f"{base}/events",
        "cancel": f"{base}/cancel",
        "scores": f"{base}/scores",
        "subset": f"{base}/subset",
    }


def select_result_links(job_id: str, proxy_id: str | None) -> dict[str, str | None]:
    """The ``links`` of a finished select job's result."""
    base = job_path(job_id)
    return {
        "subset": f"{base}/subset",
        "scores": f"{base}/scores",
        "proxy": proxy_path(proxy_id) if proxy_id else None,
    }


def proxy_result_links(proxy_id: str) -> dict[str, str]:
    """The ``links`` of a finished proxy_build job's result."""
    return {"proxy": proxy_path(proxy_id)}
