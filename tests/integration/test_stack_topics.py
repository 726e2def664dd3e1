"""Test hygiene: a test's stack deletes its topics (the broker is shared by every session)."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from tests.support import stack as stack_module
from tests.support.services import Endpoints
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def topics_of(stack: Stack) -> set[str]:
    names = AdminClient({"bootstrap.servers": stack.bootstrap}).list_topics(timeout=10).topics
    return {name for name in names if name.startswith(stack.prefix)}


def test_a_stack_deletes_the_topics_it_created(services: Endpoints) -> None:
    stack = Stack(services.bootstrap, services.dsn)
    stack.create_topics()
    assert stack in stack_module.CREATED, "registered for the end-of-test clean-up"
    made = topics_of(stack)
    assert len(made) == len(stack.registry().all_topics())
    assert stack.delete_topics() == len(made)
    assert topics_of(stack) == set()
    assert stack.delete_topics() == 0, "a second clean-up finds nothing to do"
