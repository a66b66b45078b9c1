"""The vLLM lane: tests run in their own virtual environment (tools/setup_vllm_lane.sh).

A package, so that its conftest is imported as vllm_lane.conftest and never shadows tests/conftest.py
(whose helpers other tests import by name).
"""
