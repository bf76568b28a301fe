"""Test doubles and fixtures with real components, shared by every test suite and benchmark.

Dev-only: installed by ``make install``, never by a service image.

* ``nats``, ``s3``, ``services``: pytest plugins (loaded by the root ``conftest.py``);
* ``processes``: start services and tools as real processes;
* ``gateway_upstream``, ``gateway_callbacks``: a tiny vLLM-dialect upstream and a counting
  LiteLLM callback, for the gateway's tests and benchmark;
* ``trainer``: a tiny offline model and tokenizer, datasets and job helpers for trainer tests.
"""
