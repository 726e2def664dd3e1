"""Test hygiene: a test's stack deletes its topics (the broker is shared by every session)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient

from tests.support import stack as stack_module
from tests.support.services import Endpoints
from tests.support.stack import Stack, TopicJanitor

pytestmark = pytest.mark.integration


def topics_of(stack: Stack) -> set[str]:
    names = AdminClient({"bootstrap.servers": stack.bootstrap}).list_topics(timeout=10).topics
    return {name for name in names if name.startswith(stack.prefix)}


def until(stack: Stack, accept: Callable[[set[str]], bool], timeout_s: float = 15.0) -> set[str]:
    """The stack's topics once the broker's metadata satisfies ``accept`` (it lags a little)."""
    deadline = time.monotonic() + timeout_s
    while not accept(seen := topics_of(stack)):
        assert time.monotonic() < deadline, f"the broker still lists {sorted(seen)}"
        time.sleep(0.1)
    return seen


def test_a_stack_deletes_the_topics_it_created(services: Endpoints) -> None:
    stack = Stack(services.bootstrap, services.dsn)
    stack.create_topics()
    assert stack in stack_module.CREATED, "registered for the end-of-test clean-up"
    catalog = set(stack.registry().all_topics())
    until(stack, lambda seen: seen == catalog)
    janitor = TopicJanitor()
    janitor.delete(stack)
    assert janitor.wait() == len(catalog)
    until(stack, lambda seen: not seen)
    janitor.delete(stack)
    assert janitor.wait() == 0, "a second clean-up finds nothing to delete"


def test_a_stack_deletes_its_topics_before_the_broker_lists_them(services: Endpoints) -> None:
    stack = Stack(services.bootstrap, services.dsn)
    stack.create_topics()
    janitor = TopicJanitor()
    janitor.delete(stack)
    assert janitor.wait() == len(stack.registry().all_topics())
    until(stack, lambda seen: not seen)
