"""The operator routes against their OpenAPI description, on the live web process:
schemathesis generates requests (valid and not) and checks every answer's status, body
and content type against the document; any 5xx fails."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.meta_routes import openapi_document
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


def test_operator_routes_conform_to_the_openapi_document(stack: Stack) -> None:
    schema = schemathesis.openapi.from_dict(openapi_document())
    schema.config.update(base_url=stack.web_url)
    operations = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path.startswith("/orders")
    ]
    assert len(operations) == 7  # list, one, timeline, reconcile and the three actions
    auth = {"Authorization": f"Bearer {stack.operator_token}"}
    strategy = st.one_of([operation.as_strategy() for operation in operations])

    @given(case=strategy)
    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def conforms(case: schemathesis.Case) -> None:
        # An opaque cursor is any string to a schema, but only the API's own are valid:
        # refusing a made-up one with 422 is right, so that one check is left out.
        case.call_and_validate(headers=auth, timeout=10, excluded_checks=[positive_data_acceptance])

    conforms()
